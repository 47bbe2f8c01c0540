//! Retrieval straight from the provider: an IPFS trustless gateway
//! (<https://specs.ipfs.tech/http-gateways/trustless-gateway/>) over the embedded store.
//!
//! `GET|HEAD /ipfs/{cid}[/{path}]` answers verifiable responses only: a raw block
//! (`application/vnd.ipld.raw`) or a CAR v1 stream (`application/vnd.ipld.car`, with
//! `dag-scope`, `entity-bytes`, `dups`), chosen by `?format=` or `Accept`. It is read-only,
//! unauthenticated, non-recursive (never fetches from elsewhere) and serves only content comine
//! pinned. It listens on its own address, so the job API's token never meets the public.
//! Abuse limits: a per-client token bucket (429 with `Retry-After`) and a bound on concurrent
//! CAR streams (503). Every block is re-hashed as it is read, so a corrupt block is never sent.

pub mod car_response;
pub mod negotiate;
pub mod pinned;
pub mod ratelimit;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use cid::Cid;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{parse_cid, Store, StoreError};
use car_response::{CarPlan, PlanError};
use negotiate::{negotiate, Format, CAR_MEDIA, RAW_MEDIA};
use pinned::{Access, PinnedIndex};
use ratelimit::RateLimiter;

/// Gateway limits (the `[gateway]` config table without its listen address).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Sustained requests per second per client IP (IPv6: per /64); 0 disables the limit.
    pub rate_per_sec: f64,
    /// Requests a client may make at once before the rate applies.
    pub burst: u32,
    /// CAR streams served at the same time, all clients together.
    pub max_streams: usize,
    /// Blocks the pinned-DAG index may hold (about 100 bytes each).
    pub index_blocks: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            rate_per_sec: 20.0,
            burst: 40,
            max_streams: 16,
            index_blocks: 1 << 20,
        }
    }
}

/// Immutable content: cacheable for the longest time browsers honour (as the spec suggests).
const IMMUTABLE: &str = "public, max-age=29030400, immutable";

#[derive(Clone)]
struct Gateway {
    store: Store,
    limiter: Arc<RateLimiter>,
    streams: Arc<Semaphore>,
    index: Arc<PinnedIndex>,
    shutdown: CancellationToken,
}

/// The gateway's routes. Serve them with connection info (see [`serve`]): the rate limit is
/// per client address.
pub fn router(store: Store, cfg: &GatewayConfig, shutdown: CancellationToken) -> Router {
    let gw = Gateway {
        store,
        limiter: Arc::new(RateLimiter::new(cfg.rate_per_sec, cfg.burst)),
        streams: Arc::new(Semaphore::new(cfg.max_streams.max(1))),
        index: Arc::new(PinnedIndex::new(cfg.index_blocks)),
        shutdown,
    };
    Router::new()
        .route("/ipfs/{*rest}", get(ipfs))
        .route("/ipns/{*rest}", get(ipns))
        .fallback(|| async {
            text(
                StatusCode::NOT_FOUND,
                "not found: this trustless gateway serves GET /ipfs/{cid} only",
            )
        })
        .with_state(gw)
}

/// Serves the gateway on `listener` until `shutdown`; CAR streams in flight stop at shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Store,
    cfg: &GatewayConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(store, cfg, shutdown.clone());
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut msg = msg.into();
    msg.push('\n');
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        msg,
    )
        .into_response()
}

async fn ipns(State(gw): State<Gateway>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    if let Err(wait) = gw.limiter.check(peer.ip(), Instant::now()) {
        return too_many(wait);
    }
    text(
        StatusCode::NOT_IMPLEMENTED,
        "IPNS is not served: this gateway serves immutable /ipfs/{cid} content pinned by comine",
    )
}

fn too_many(wait: Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut r = text(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many requests from your address; retry in {secs} s"),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// Keeps `filename` to characters that are safe inside a quoted header value.
fn safe_filename(query: &HashMap<String, String>, default: String) -> String {
    match query.get("filename") {
        Some(f)
            if !f.is_empty()
                && f.len() <= 255
                && f.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c)) =>
        {
            f.clone()
        }
        _ => default,
    }
}

/// 32-bit FNV-1a: a short, stable digest of what makes a CAR answer unique (for its Etag).
fn fnv32(parts: &[&str]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

fn not_available(cid: &Cid, only_if_cached: bool, why: &str) -> Response {
    if only_if_cached {
        text(
            StatusCode::PRECONDITION_FAILED,
            format!("{cid} is not in this gateway's store ({why})"),
        )
    } else {
        text(StatusCode::NOT_FOUND, format!("{cid}: {why}"))
    }
}

fn store_failure(cid: &Cid, e: &StoreError, only_if_cached: bool) -> Response {
    match e {
        StoreError::NotFound { .. } => {
            not_available(cid, only_if_cached, "not found in this provider's store")
        }
        StoreError::Corrupt { cid: bad } => {
            tracing::error!(%bad, requested = %cid, "gateway refused to serve a corrupt block");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("block {bad} is corrupt in this provider's store and is not served; the operator must re-add the rendition"),
            )
        }
        other => {
            tracing::error!(%cid, error = %other, "gateway store error");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the provider's store failed reading {cid}: {other}"),
            )
        }
    }
}

/// Runs blocking store work off the async workers; a panicked task is a 500.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "gateway task failed");
        text(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    })
}

async fn ipfs(
    State(gw): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    Path(rest): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    // Cheapest check first: a flood costs one hash-map lookup per request.
    if let Err(wait) = gw.limiter.check(peer.ip(), Instant::now()) {
        return too_many(wait);
    }
    let mut parts = rest.split('/').filter(|s| !s.is_empty());
    let Some(cid_text) = parts.next() else {
        return text(StatusCode::BAD_REQUEST, "missing CID: use /ipfs/{cid}");
    };
    let segments: Vec<String> = parts.map(str::to_string).collect();
    let cid = match parse_cid(cid_text) {
        Ok(c) => c,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let neg = match negotiate(&query, accept) {
        Ok(n) => n,
        Err(r) => {
            return text(
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
                r.message,
            )
        }
    };
    let only_if_cached = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("only-if-cached"));
    let path_suffix: String = segments.iter().map(|s| format!("/{s}")).collect();
    let ipfs_path = format!("/ipfs/{cid_text}{path_suffix}");
    match neg.format {
        Format::Raw => {
            if !segments.is_empty() {
                return text(
                    StatusCode::BAD_REQUEST,
                    "raw blocks are served for /ipfs/{cid} only; ask for a CAR (format=car) to resolve a path",
                );
            }
            raw(
                gw,
                cid,
                cid_text,
                &query,
                &headers,
                &method,
                neg.from_query,
                only_if_cached,
                ipfs_path,
            )
            .await
        }
        Format::Car(req) => {
            car(
                gw,
                cid,
                cid_text,
                segments,
                req,
                &query,
                &headers,
                &method,
                neg.from_query,
                only_if_cached,
                ipfs_path,
            )
            .await
        }
    }
}

fn common_headers(
    h: &mut HeaderMap,
    etag: &str,
    content_type: &str,
    filename: &str,
    ipfs_path: &str,
) {
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set(h, header::CONTENT_TYPE, content_type);
    set(h, header::ETAG, etag);
    set(h, header::CACHE_CONTROL, IMMUTABLE);
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::VARY, "Accept");
    set(
        h,
        header::CONTENT_DISPOSITION,
        &format!("attachment; filename=\"{filename}\""),
    );
    set(h, header::HeaderName::from_static("x-ipfs-path"), ipfs_path);
}

#[allow(clippy::too_many_arguments)]
async fn raw(
    gw: Gateway,
    cid: Cid,
    cid_text: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    method: &Method,
    from_query: bool,
    only_if_cached: bool,
    ipfs_path: String,
) -> Response {
    let etag = format!("\"{cid}.raw\"");
    let body: Bytes = if cid.hash().code() == 0x00 {
        // Identity CID (the spec's probe `bafkqaaa` among them): the bytes are the CID's own digest.
        Bytes::copy_from_slice(cid.hash().digest())
    } else {
        let store = gw.store.clone();
        let index = gw.index.clone();
        let loaded = blocking(move || -> Result<Option<Bytes>, StoreError> {
            match index.check(&store, &cid)? {
                Access::Allowed => Ok(Some(Bytes::copy_from_slice(&store.get_block(&cid)?))),
                Access::Missing | Access::NotPinned => Ok(None),
            }
        })
        .await;
        match loaded {
            Err(r) => return r,
            Ok(Ok(Some(b))) => b,
            Ok(Ok(None)) => {
                return not_available(&cid, only_if_cached, "not pinned by this provider")
            }
            Ok(Err(e)) => return store_failure(&cid, &e, only_if_cached),
        }
    };
    if etag_matches(headers, &etag) {
        return not_modified(&etag);
    }
    let filename = safe_filename(query, format!("{cid_text}.bin"));
    let mut resp = if method == Method::HEAD {
        let mut r = Response::new(Body::empty());
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        r
    } else {
        Response::new(Body::from(body))
    };
    common_headers(resp.headers_mut(), &etag, RAW_MEDIA, &filename, &ipfs_path);
    if let Ok(v) = HeaderValue::from_str(&cid.to_string()) {
        resp.headers_mut()
            .insert(header::HeaderName::from_static("x-ipfs-roots"), v);
    }
    if !from_query {
        if let Ok(v) = HeaderValue::from_str(&format!("{ipfs_path}?format=raw")) {
            resp.headers_mut().insert(header::CONTENT_LOCATION, v);
        }
    }
    resp
}

fn not_modified(etag: &str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NOT_MODIFIED;
    if let Ok(v) = HeaderValue::from_str(etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    r
}

#[allow(clippy::too_many_arguments)]
async fn car(
    gw: Gateway,
    cid: Cid,
    cid_text: &str,
    segments: Vec<String>,
    req: negotiate::CarRequest,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    method: &Method,
    from_query: bool,
    only_if_cached: bool,
    ipfs_path: String,
) -> Response {
    let probe = cid.hash().code() == 0x00;
    let store = gw.store.clone();
    let index = gw.index.clone();
    let req2 = req.clone();
    let planned = blocking(move || -> Result<Option<CarPlan>, PlanError> {
        if !probe {
            match index.check(&store, &cid)? {
                Access::Allowed => {}
                Access::Missing | Access::NotPinned => return Ok(None),
            }
        }
        car_response::plan(&store, &cid, &segments, &req2).map(Some)
    })
    .await;
    let plan = match planned {
        Err(r) => return r,
        Ok(Ok(Some(p))) => p,
        Ok(Ok(None)) => return not_available(&cid, only_if_cached, "not pinned by this provider"),
        Ok(Err(PlanError::Store(e))) => return store_failure(&cid, &e, only_if_cached),
        Ok(Err(PlanError::NoSuchPath(m))) => return text(StatusCode::NOT_FOUND, m),
        Ok(Err(PlanError::Unsupported(m))) => return text(StatusCode::NOT_IMPLEMENTED, m),
    };
    let dups = if plan.dups { "y" } else { "n" };
    let range_text = plan
        .range
        .map(|(a, b)| format!("{a}:{b}"))
        .unwrap_or_default();
    let etag = format!(
        "\"{cid}.car.{:08x}\"",
        fnv32(&[
            &ipfs_path,
            req.scope.as_str(),
            plan.scope.as_str(),
            &range_text,
            dups,
            "v1dfs"
        ])
    );
    if etag_matches(headers, &etag) {
        return not_modified(&etag);
    }
    let content_type = format!("{CAR_MEDIA}; version=1; order=dfs; dups={dups}");
    let filename = safe_filename(query, format!("{cid_text}.car"));
    let mut resp = if method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        let Ok(permit) = gw.streams.clone().try_acquire_owned() else {
            let mut r = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many CAR downloads in progress on this gateway; retry shortly",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1u32));
            return r;
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
        let store = gw.store.clone();
        let shutdown = gw.shutdown.clone();
        let plan2 = plan.clone();
        // The producer blocks on store reads and on the bounded channel (back-pressure from a
        // slow client); it ends when the client goes away or the gateway shuts down.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut sink = |b: Bytes| !shutdown.is_cancelled() && tx.blocking_send(Ok(b)).is_ok();
            if let Err(e) = car_response::write(&store, &plan2, &mut sink) {
                tracing::error!(root = %plan2.root, error = %e, "CAR stream cut short");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        });
        // futures-util's unfold, not tokio-stream: that crate is a test-utils-only dependency.
        Response::new(Body::from_stream(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
        )))
    };
    common_headers(
        resp.headers_mut(),
        &etag,
        &content_type,
        &filename,
        &ipfs_path,
    );
    let roots: Vec<String> = plan.roots().iter().map(Cid::to_string).collect();
    if let Ok(v) = HeaderValue::from_str(&roots.join(",")) {
        resp.headers_mut()
            .insert(header::HeaderName::from_static("x-ipfs-roots"), v);
    }
    if !from_query {
        if let Ok(v) = HeaderValue::from_str(&format!("{ipfs_path}?format=car")) {
            resp.headers_mut().insert(header::CONTENT_LOCATION, v);
        }
    }
    resp
}
