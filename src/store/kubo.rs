//! Small typed client for the Kubo HTTP RPC API (`/api/v0/...`), on the project's reqwest.
//!
//! Only the endpoints comine needs: add, cat, pin/add, pin/ls, block/stat, id, version. Every
//! read sends Kubo's `timeout` option (some nodes hang forever on a missing block) and the HTTP
//! client has its own deadline on top. CIDs coming back are parsed, never compared as strings:
//! nodes print CIDv1 in different bases, and some return `Size` as a number, others a string.

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use cid::Cid;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use super::AddOptions;

/// Kubo RPC failures, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum KuboError {
    #[error("'{0}' is not an IPFS API address: use http://HOST:PORT or /ip4/HOST/tcp/PORT")]
    BadUrl(String),
    #[error("IPFS node at {url} is unreachable ({detail}); is the daemon running? Data stays in the local store and queued")]
    Unreachable { url: String, detail: String },
    #[error(
        "IPFS node at {url} did not answer {endpoint} within {timeout:?}; it may be overloaded"
    )]
    Timeout {
        url: String,
        endpoint: String,
        timeout: Duration,
    },
    #[error("{cid} was not found by the IPFS node within {timeout:?} (unknown CID, or no provider reachable)")]
    NotFound { cid: Cid, timeout: Duration },
    #[error("IPFS node refused {endpoint} (HTTP {status}): {message}")]
    Api {
        endpoint: String,
        status: u16,
        message: String,
    },
    #[error(
        "IPFS node answered {endpoint} with something that is not Kubo's RPC format: {detail}"
    )]
    BadResponse { endpoint: String, detail: String },
    #[error("CID mismatch: comine computed {local} but the IPFS node stored {remote}; check that the node uses the default chunker and the same --cid-version/--raw-leaves")]
    CidMismatch { local: String, remote: String },
    #[error("reading the data to upload: {0}")]
    Source(String),
}

/// What the node reported for an add.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KuboAdded {
    #[serde(serialize_with = "super::ser_cid")]
    pub cid: Cid,
    pub size: u64,
}

/// `block/stat` answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlockStat {
    #[serde(serialize_with = "super::ser_cid")]
    pub cid: Cid,
    pub size: u64,
}

/// `id` answer (the fields we use).
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeId {
    pub id: String,
    pub agent_version: String,
    pub addresses: Vec<String>,
}

/// Async client for one node.
#[derive(Clone, Debug)]
pub struct KuboClient {
    base: String,
    http: reqwest::Client,
    timeout: Duration,
}

/// Default deadline for reads (`timeout` query option and HTTP deadline).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Turns `http://h:p`, `h:p` or a multiaddr `/ip4/h/tcp/p[/http]` into a base URL.
pub fn api_base_url(api: &str) -> Result<String, KuboError> {
    let api = api.trim();
    if api.starts_with("http://") || api.starts_with("https://") {
        let base = api
            .trim_end_matches('/')
            .trim_end_matches("/api/v0")
            .to_string();
        return reqwest::Url::parse(&base)
            .map(|_| base)
            .map_err(|_| KuboError::BadUrl(api.to_string()));
    }
    if api.starts_with('/') {
        let parts: Vec<&str> = api.split('/').filter(|p| !p.is_empty()).collect();
        if let [proto, host, "tcp", port, rest @ ..] = parts.as_slice() {
            let port: u16 = port
                .parse()
                .map_err(|_| KuboError::BadUrl(api.to_string()))?;
            let scheme = if rest.contains(&"https") {
                "https"
            } else {
                "http"
            };
            let host = match *proto {
                "ip4" | "dns" | "dns4" | "dns6" => host.to_string(),
                "ip6" => format!("[{host}]"),
                _ => return Err(KuboError::BadUrl(api.to_string())),
            };
            return Ok(format!("{scheme}://{host}:{port}"));
        }
        return Err(KuboError::BadUrl(api.to_string()));
    }
    if api.contains(':') && !api.contains(' ') {
        return api_base_url(&format!("http://{api}"));
    }
    Err(KuboError::BadUrl(api.to_string()))
}

fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// Kubo encodes numbers as JSON numbers or strings depending on the endpoint and version.
fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn cid_field(v: &Value, key: &str, endpoint: &str) -> Result<Cid, KuboError> {
    let bad = |detail: String| KuboError::BadResponse {
        endpoint: endpoint.to_string(),
        detail,
    };
    let raw = match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        // dag-json style {"/": "bafy…"}
        Some(Value::Object(o)) => o
            .get("/")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => {
            return Err(bad(format!(
                "no '{key}' field in {}",
                snippet(&v.to_string())
            )))
        }
    };
    Cid::try_from(raw.as_str()).map_err(|e| bad(format!("'{key}' is not a CID ({e}): {raw}")))
}

fn snippet(s: &str) -> String {
    let s = s.trim();
    let mut out: String = s.chars().take(160).collect();
    if s.chars().count() > 160 {
        out.push('…');
    }
    out
}

/// Streams a blocking reader through a bounded channel (the reader runs on a blocking thread).
fn reader_stream(
    mut reader: Box<dyn Read + Send>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || loop {
        let mut buf = vec![0u8; 256 * 1024];
        match super::importer::read_full(&mut reader, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                buf.truncate(n);
                if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                    break;
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                break;
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

impl KuboClient {
    /// Client for the node at `api` (URL or multiaddr). `timeout` bounds every read.
    pub fn new(api: &str, timeout: Duration) -> Result<KuboClient, KuboError> {
        let base = api_base_url(api)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // A node that stops sending (hung on a missing block, overloaded) is cut off
            // between chunks too, not only before the first byte.
            .read_timeout(timeout + Duration::from_secs(5))
            .build()
            .map_err(|e| KuboError::BadUrl(format!("{api}: {e}")))?;
        Ok(KuboClient {
            base,
            http,
            timeout,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn url(&self, endpoint: &str) -> String {
        format!("{}/api/v0/{endpoint}", self.base)
    }

    fn map_send_error(&self, endpoint: &str, e: reqwest::Error, timeout: Duration) -> KuboError {
        if e.is_timeout() {
            KuboError::Timeout {
                url: self.base.clone(),
                endpoint: endpoint.to_string(),
                timeout,
            }
        } else if e.is_connect() || e.is_request() {
            KuboError::Unreachable {
                url: self.base.clone(),
                detail: e.to_string(),
            }
        } else {
            KuboError::BadResponse {
                endpoint: endpoint.to_string(),
                detail: e.to_string(),
            }
        }
    }

    /// Sends one RPC call; returns the successful response or a typed error. `cid` turns
    /// "not found"/timeout answers into [`KuboError::NotFound`].
    async fn call(
        &self,
        endpoint: &str,
        query: &[(&str, String)],
        cid: Option<&Cid>,
        http_timeout: Option<Duration>,
    ) -> Result<reqwest::Response, KuboError> {
        let mut req = self.http.post(self.url(endpoint)).query(query);
        if let Some(t) = http_timeout {
            req = req.timeout(t);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() && cid.is_some() => {
                return Err(KuboError::NotFound {
                    cid: *cid.unwrap_or(&Cid::default()),
                    timeout: self.timeout,
                })
            }
            Err(e) => {
                return Err(self.map_send_error(endpoint, e, http_timeout.unwrap_or(self.timeout)))
            }
        };
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("Message").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| snippet(&body));
        if let Some(cid) = cid {
            let m = message.to_ascii_lowercase();
            if [
                "not found",
                "timeout",
                "deadline",
                "timed out",
                "aborted",
                "could not find",
            ]
            .iter()
            .any(|k| m.contains(k))
            {
                return Err(KuboError::NotFound {
                    cid: *cid,
                    timeout: self.timeout,
                });
            }
        }
        Err(KuboError::Api {
            endpoint: endpoint.to_string(),
            status,
            message,
        })
    }

    async fn json(&self, endpoint: &str, resp: reqwest::Response) -> Result<Value, KuboError> {
        let body = resp.bytes().await.map_err(|e| KuboError::BadResponse {
            endpoint: endpoint.to_string(),
            detail: e.to_string(),
        })?;
        serde_json::from_slice(&body).map_err(|e| KuboError::BadResponse {
            endpoint: endpoint.to_string(),
            detail: format!("{e}: {}", snippet(&String::from_utf8_lossy(&body))),
        })
    }

    fn read_query(&self, cid: &Cid) -> Vec<(&'static str, String)> {
        vec![
            ("arg", cid.to_string()),
            ("timeout", go_duration(self.timeout)),
        ]
    }

    /// The HTTP deadline for reads: the node's own timeout plus slack to deliver its answer.
    fn read_deadline(&self) -> Duration {
        self.timeout + Duration::from_secs(5)
    }

    /// `add`: uploads `reader` as one file with Kubo's default chunker and the given CID
    /// options, pinned. The reader runs on a blocking thread.
    pub async fn add(
        &self,
        reader: Box<dyn Read + Send>,
        name: &str,
        opts: &AddOptions,
    ) -> Result<KuboAdded, KuboError> {
        let endpoint = "add";
        let boundary = format!("comine-{:016x}", rand_u64());
        let safe_name: String = name
            .chars()
            .filter(|c| !matches!(c, '"' | '\r' | '\n' | '/'))
            .collect();
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
            if safe_name.is_empty() { "file" } else { &safe_name }
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let body =
            futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(head)) })
                .chain(reader_stream(reader))
                .chain(futures_util::stream::once(
                    async move { Ok(Bytes::from(tail)) },
                ));
        let query = [
            ("cid-version", opts.cid_version.to_string()),
            ("raw-leaves", opts.raw_leaves().to_string()),
            ("chunker", "size-262144".to_string()),
            ("pin", "true".to_string()),
            ("progress", "false".to_string()),
            ("quieter", "true".to_string()),
        ];
        let resp = self
            .http
            .post(self.url(endpoint))
            .query(&query)
            .header(
                "Content-Type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map_err(|e| self.map_send_error(endpoint, e, self.timeout))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("Message").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| snippet(&body));
            return Err(KuboError::Api {
                endpoint: endpoint.into(),
                status,
                message,
            });
        }
        let text = resp.text().await.map_err(|e| KuboError::BadResponse {
            endpoint: endpoint.into(),
            detail: e.to_string(),
        })?;
        // NDJSON: one object per line; the last one with a Hash is the root.
        let mut last = None;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).map_err(|e| KuboError::BadResponse {
                endpoint: endpoint.into(),
                detail: format!("{e}: {}", snippet(line)),
            })?;
            if let Some(msg) = v.get("Message").and_then(Value::as_str) {
                return Err(KuboError::Api {
                    endpoint: endpoint.into(),
                    status: 200,
                    message: msg.to_string(),
                });
            }
            if v.get("Hash").is_some() {
                last = Some(v);
            }
        }
        let v = last.ok_or_else(|| KuboError::BadResponse {
            endpoint: endpoint.into(),
            detail: format!("no Hash in the answer: {}", snippet(&text)),
        })?;
        let cid = cid_field(&v, "Hash", endpoint)?;
        let size = v.get("Size").and_then(as_u64).unwrap_or(0);
        Ok(KuboAdded { cid, size })
    }

    /// `add`, then checks the node's CID against `expected` (parsed, not string-compared).
    pub async fn add_verified(
        &self,
        reader: Box<dyn Read + Send>,
        name: &str,
        opts: &AddOptions,
        expected: &Cid,
    ) -> Result<KuboAdded, KuboError> {
        let added = self.add(reader, name, opts).await?;
        if !same_cid(&added.cid, expected) {
            return Err(KuboError::CidMismatch {
                local: expected.to_string(),
                remote: added.cid.to_string(),
            });
        }
        Ok(added)
    }

    /// `cat`: streams the file's bytes.
    pub async fn cat(
        &self,
        cid: &Cid,
    ) -> Result<impl Stream<Item = Result<Bytes, KuboError>>, KuboError> {
        // No overall HTTP deadline on the body (files can be large); the node's `timeout`
        // bounds finding the blocks.
        let resp = self
            .call("cat", &self.read_query(cid), Some(cid), None)
            .await?;
        let cid = *cid;
        let timeout = self.timeout;
        Ok(resp.bytes_stream().map(move |r| {
            r.map_err(|e| {
                if e.is_timeout() {
                    KuboError::NotFound { cid, timeout }
                } else {
                    KuboError::BadResponse {
                        endpoint: "cat".into(),
                        detail: e.to_string(),
                    }
                }
            })
        }))
    }

    /// `cat` into memory (small files, tests).
    pub async fn cat_bytes(&self, cid: &Cid) -> Result<Vec<u8>, KuboError> {
        let mut stream = Box::pin(self.cat(cid).await?);
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    /// `pin/add` (recursive).
    pub async fn pin_add(&self, cid: &Cid) -> Result<(), KuboError> {
        let resp = self
            .call(
                "pin/add",
                &self.read_query(cid),
                Some(cid),
                Some(self.read_deadline()),
            )
            .await?;
        let v = self.json("pin/add", resp).await?;
        let pins =
            v.get("Pins")
                .and_then(Value::as_array)
                .ok_or_else(|| KuboError::BadResponse {
                    endpoint: "pin/add".into(),
                    detail: format!("no Pins list: {}", snippet(&v.to_string())),
                })?;
        let ok = pins
            .iter()
            .filter_map(Value::as_str)
            .any(|p| Cid::try_from(p).is_ok_and(|c| same_cid(&c, cid)));
        if !ok {
            return Err(KuboError::BadResponse {
                endpoint: "pin/add".into(),
                detail: format!("{cid} not in {pins:?}"),
            });
        }
        Ok(())
    }

    /// `pin/ls`: whether `cid` is pinned (any pin type). Nodes answer an error for unpinned CIDs.
    pub async fn pin_ls(&self, cid: &Cid) -> Result<bool, KuboError> {
        let mut q = self.read_query(cid);
        q.push(("type", "all".into()));
        let resp = match self
            .call("pin/ls", &q, None, Some(self.read_deadline()))
            .await
        {
            Ok(r) => r,
            Err(KuboError::Api { message, .. })
                if message.to_ascii_lowercase().contains("not pinned") =>
            {
                return Ok(false)
            }
            Err(e) => return Err(e),
        };
        // Kubo answers {"Keys": {cid: {"Type": …}}}; with stream=true (and other nodes) it is
        // NDJSON lines {"Cid": cid, "Type": …}. Accept both.
        let text = resp.text().await.map_err(|e| KuboError::BadResponse {
            endpoint: "pin/ls".into(),
            detail: e.to_string(),
        })?;
        let mut found = false;
        let mut parsed_any = false;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).map_err(|e| KuboError::BadResponse {
                endpoint: "pin/ls".into(),
                detail: format!("{e}: {}", snippet(line)),
            })?;
            if let Some(keys) = v.get("Keys").and_then(Value::as_object) {
                parsed_any = true;
                found |= keys
                    .keys()
                    .any(|k| Cid::try_from(k.as_str()).is_ok_and(|c| same_cid(&c, cid)));
            } else if v.get("Cid").is_some() {
                parsed_any = true;
                found |= cid_field(&v, "Cid", "pin/ls").is_ok_and(|c| same_cid(&c, cid));
            }
        }
        if !parsed_any {
            return Err(KuboError::BadResponse {
                endpoint: "pin/ls".into(),
                detail: snippet(&text),
            });
        }
        Ok(found)
    }

    /// `block/stat`.
    pub async fn block_stat(&self, cid: &Cid) -> Result<BlockStat, KuboError> {
        let resp = self
            .call(
                "block/stat",
                &self.read_query(cid),
                Some(cid),
                Some(self.read_deadline()),
            )
            .await?;
        let v = self.json("block/stat", resp).await?;
        let key = cid_field(&v, "Key", "block/stat")?;
        let size = v
            .get("Size")
            .and_then(as_u64)
            .ok_or_else(|| KuboError::BadResponse {
                endpoint: "block/stat".into(),
                detail: format!("no numeric Size: {}", snippet(&v.to_string())),
            })?;
        Ok(BlockStat { cid: key, size })
    }

    /// `id`.
    pub async fn id(&self) -> Result<NodeId, KuboError> {
        let resp = self
            .call(
                "id",
                &[("timeout", go_duration(self.timeout))],
                None,
                Some(self.read_deadline()),
            )
            .await?;
        let v = self.json("id", resp).await?;
        let id = v
            .get("ID")
            .and_then(Value::as_str)
            .ok_or_else(|| KuboError::BadResponse {
                endpoint: "id".into(),
                detail: format!("no ID field: {}", snippet(&v.to_string())),
            })?;
        Ok(NodeId {
            id: id.to_string(),
            agent_version: v
                .get("AgentVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            addresses: v
                .get("Addresses")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// `version`: the node's version string.
    pub async fn version(&self) -> Result<String, KuboError> {
        let resp = self
            .call("version", &[], None, Some(self.read_deadline()))
            .await?;
        let v = self.json("version", resp).await?;
        v.get("Version")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| KuboError::BadResponse {
                endpoint: "version".into(),
                detail: format!("no Version field: {}", snippet(&v.to_string())),
            })
    }
}

/// Two CIDs name the same content and the same DAG: same version, codec and multihash.
/// Parsed CIDs compare base-independently, so a base32 and a base36 CIDv1 are equal.
pub fn same_cid(a: &Cid, b: &Cid) -> bool {
    a == b
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_addresses() {
        assert_eq!(
            api_base_url("/ip4/127.0.0.1/tcp/5001").unwrap(),
            "http://127.0.0.1:5001"
        );
        assert_eq!(
            api_base_url("/ip4/127.0.0.1/tcp/5001/http").unwrap(),
            "http://127.0.0.1:5001"
        );
        assert_eq!(
            api_base_url("http://127.0.0.1:5001/").unwrap(),
            "http://127.0.0.1:5001"
        );
        assert_eq!(
            api_base_url("127.0.0.1:5001").unwrap(),
            "http://127.0.0.1:5001"
        );
        assert_eq!(
            api_base_url("/ip6/::1/tcp/5001").unwrap(),
            "http://[::1]:5001"
        );
        assert!(api_base_url("nonsense").is_err());
        assert!(api_base_url("/ip4/1.2.3.4/udp/5").is_err());
    }

    #[test]
    fn cids_compare_across_bases() {
        let b32: Cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
            .parse()
            .unwrap();
        let b36 = Cid::try_from(
            b32.to_string_of_base(cid::multibase::Base::Base36Lower)
                .unwrap()
                .as_str(),
        )
        .unwrap();
        assert!(same_cid(&b32, &b36));
        assert_eq!(as_u64(&Value::String("12".into())), Some(12));
        assert_eq!(as_u64(&serde_json::json!(12)), Some(12));
    }
}
