//! Livepeer remote transcoder: comine joins a pool's go-livepeer orchestrator exactly as a
//! stock `livepeer -transcoder` does.
//!
//! [`run_transcoder`] dials the orchestrator's TLS port, calls `RegisterTranscoder` with the
//! secret, the capacity the scheduler grants and our capabilities, and then serves the
//! `NotifySegment` stream: every task is fetched over HTTPS, handed to a [`SegmentPipeline`]
//! (the daemon's admits it and runs the transcoding engine) within the orchestrator's
//! deadline, and posted back to `/transcodeResults` as `multipart/mixed`; then handed to a
//! [`SegmentSink`]. This module speaks the protocol only: it imports nothing later in the
//! data path, and the daemon supplies the work through those two traits.
//! Capacity changes that last longer than a dwell time re-register; connection faults
//! reconnect with capped exponential backoff; "invalid secret" and "zero capacity" stop.
//!
//! `test_orchestrator` (feature `test-utils`) is an in-repo test double of the orchestrator side.

pub mod ai_proto;
pub mod ai_worker;
pub mod args;
mod client;
mod drain;
mod handover;
pub mod multipart;
pub mod pipeline;
pub mod proto;
mod segment;
mod sessions;
pub mod sink;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_orchestrator;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_orchestrator_ai;
pub mod tls;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy_primitives::Address;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

pub use args::{CapacityArg, LivepeerArgs};
pub use pipeline::{Device, SegmentError, SegmentPipeline, SegmentTask, Transcoded};
pub use proto::{CAPABILITIES, LIVEPEER_COMPAT_VERSION};
#[cfg(any(test, feature = "test-utils"))]
pub use sink::MemorySink;
pub use sink::RenditionOutput;
pub use sink::{SegmentFailure, SegmentRecord, SegmentSink};
pub use tls::TlsPolicy;

/// Everything the client needs; [`LivepeerArgs::to_config`] builds it from flags.
#[derive(Clone, Debug)]
pub struct TranscoderConfig {
    /// `HOST:PORT` of the orchestrator's TLS port (gRPC and HTTPS).
    pub orch_addr: String,
    /// Further orchestrators to fail over to, in order, when a connection fails.
    pub fallback_addrs: Vec<String>,
    pub secret: String,
    /// Sent as `RegisterRequest.ethereum_address` (field 4) for pools that pay by address.
    pub eth_address: Option<Address>,
    pub tls: TlsPolicy,
    /// Scratch space for renditions; each task gets its own subdirectory, removed after.
    pub work_dir: PathBuf,
    /// A capacity change must hold this long before we re-register.
    pub capacity_dwell: Duration,
    /// The orchestrator's deadline is max(this, 4 × segment duration); 8 s in go-livepeer.
    pub deadline_floor: Duration,
    /// HTTP/2 PING interval and timeout on the gRPC connection: detects a dead stream.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub version: String,
    /// Largest segment we download.
    pub max_segment_bytes: u64,
    /// Session state not used for this long is dropped (the O may never send a teardown).
    pub session_idle_timeout: Duration,
    /// Tasks in flight beyond this are answered with an error part at once.
    pub max_in_flight: usize,
    /// Where the connection loop reports its state (the daemon shows it in `/v1/status`).
    pub link: Arc<LinkStatus>,
    /// Asks the orchestrator's `GetOrchestrator` for its price on each connection, at once
    /// and every `price_interval`; `None` asks nothing.
    pub price_quotes: Option<Arc<dyn PriceQuotes>>,
    pub price_interval: Duration,
}

/// The orchestrator's price, as `GetOrchestrator` answered it (`OrchestratorInfo.price_info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriceQuote {
    /// Wei per `pixels_per_unit` pixels (go-livepeer's `-pricePerUnit`).
    pub price_per_unit: u64,
    pub pixels_per_unit: u64,
    /// `OrchestratorInfo.address`, when it is 20 bytes.
    pub orchestrator: Option<Address>,
}

/// Where the price quotes go (the daemon's price board). This module only speaks the
/// protocol: the request's address and signature come from whoever holds the key.
pub trait PriceQuotes: Send + Sync + std::fmt::Debug {
    /// `GetOrchestrator`'s request: a sender address and its signature over the address's
    /// checksummed hex. go-livepeer checks the signature against the address (any key may
    /// sign its own address; an off-chain orchestrator checks nothing).
    fn request(&self) -> proto::OrchestratorRequest;
    /// The orchestrator at `orch_addr` quoted `quote`, or (`None`) did not answer: its
    /// earlier quote no longer stands.
    fn quoted(&self, orch_addr: &str, quote: Option<PriceQuote>);
}

/// The connection's state as the client last reported it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LinkSnapshot {
    /// `starting`, `checking_secret`, `waiting_for_capacity`, `connecting`, `registered`, `backoff`,
    /// `stopped` or `fatal`.
    pub state: &'static str,
    /// The capacity of the current (or last) registration.
    pub registered_capacity: u32,
    /// Registrations attempted since start (re-registrations and reconnects included).
    pub registrations: u64,
    /// The scheduler's grant is below the registered capacity: it goes down as streams end,
    /// and new streams are refused while the running ones fill the grant.
    pub draining: bool,
    /// New streams refused while draining (their first segment answered with an error, so
    /// the orchestrator places them elsewhere).
    pub streams_refused_draining: u64,
    /// Why the last connection ended, when it was a fault or a refusal.
    pub last_fault: Option<String>,
    /// The orchestrator of the current (or last) connection (several with failover).
    pub orch_addr: String,
    /// Wall-clock time of the last state change, ms since the epoch.
    pub since_ms: u64,
}

/// Shared, cheaply updated [`LinkSnapshot`].
#[derive(Debug, Default)]
pub struct LinkStatus(Mutex<LinkSnapshot>);

impl LinkStatus {
    pub fn get(&self) -> LinkSnapshot {
        let mut s = self.0.lock().map(|s| s.clone()).unwrap_or_default();
        if s.state.is_empty() {
            s.state = "starting";
        }
        s
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut LinkSnapshot)) {
        if let Ok(mut s) = self.0.lock() {
            f(&mut s);
            s.since_ms = crate::util::now_ms();
        }
    }

    pub(crate) fn set_state(&self, state: &'static str) {
        self.update(|s| s.state = state);
    }
}

impl TranscoderConfig {
    pub fn new(orch_addr: impl Into<String>, secret: impl Into<String>) -> Self {
        TranscoderConfig {
            orch_addr: orch_addr.into(),
            fallback_addrs: Vec::new(),
            secret: secret.into(),
            eth_address: None,
            tls: TlsPolicy::AcceptSelfSigned,
            work_dir: std::env::temp_dir().join("comine-livepeer"),
            capacity_dwell: Duration::from_secs(10),
            deadline_floor: Duration::from_secs(8),
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(20),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            version: LIVEPEER_COMPAT_VERSION.into(),
            max_segment_bytes: 64 << 20,
            session_idle_timeout: Duration::from_secs(120),
            max_in_flight: 64,
            link: Arc::default(),
            price_quotes: None,
            price_interval: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LivepeerError {
    #[error("the orchestrator at {addr} rejected our secret (\"invalid secret\"): pass the orchestrator's -orchSecret value with --orch-secret SECRET or --orch-secret @FILE")]
    InvalidSecret { addr: String },
    #[error("the orchestrator at {addr} refused capacity {capacity} (\"zero capacity\"): give --capacity a number above 0, or let the scheduler grant some GPU time (--capacity auto)")]
    ZeroCapacity { addr: String, capacity: u32 },
    #[error("{0}")]
    Config(String),
    #[error("cannot create the work directory {path}: {source}")]
    WorkDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the remote transcoder until `shutdown` fires (then `Ok`) or a fatal refusal.
///
/// `capacity` is the scheduler's grant (a fixed channel for `--capacity N`); 0 means "give
/// the GPU back": we unregister and wait. `pipeline` turns each downloaded segment into
/// renditions (the daemon's: admission, then the engine on the granted device); `sink`
/// receives every finished task after its upload.
pub async fn run_transcoder(
    cfg: TranscoderConfig,
    capacity: watch::Receiver<u32>,
    pipeline: Arc<dyn SegmentPipeline>,
    sink: Arc<dyn SegmentSink>,
    shutdown: CancellationToken,
) -> Result<(), LivepeerError> {
    client::run(cfg, capacity, pipeline, sink, shutdown).await
}

/// State shared by the connection loop and every task.
pub(crate) struct Shared {
    pub cfg: TranscoderConfig,
    pub pipeline: Arc<dyn SegmentPipeline>,
    pub sink: Arc<dyn SegmentSink>,
    pub sessions: sessions::Sessions,
    /// Lowering the registered capacity without cutting streams (shared by every orchestrator).
    pub drain: Arc<drain::Drain>,
    pub in_flight: Arc<Semaphore>,
    pub shutdown: CancellationToken,
}

/// One error's whole `source()` chain on a line (tonic's and hyper's top levels are terse).
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let msg = e.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = e.source();
    }
    s
}
