//! The connection loop: register, serve the notification stream, re-register on a lasting
//! capacity change, reconnect with capped exponential backoff on faults.
//!
//! With several orchestrators (`--orch-addr a,b`), a failed connection moves on to the next
//! address at once; only when every address failed in a row does the backoff apply. The
//! address in use stays until its connection fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Endpoint;
use tracing::Instrument;

use futures_util::FutureExt;

use super::drain::Drain;
use super::handover;
use super::proto::{
    capability_bitstring, Capabilities, NotifySegment, OrchestratorClient, RegisterRequest,
    TranscoderClient, CAPABILITIES,
};
use super::sessions::Sessions;
use super::{
    chain, segment, tls, LivepeerError, PriceQuote, SegmentPipeline, SegmentSink, Shared,
    TlsPolicy, TranscoderConfig,
};

/// Why one connection ended.
enum Ended {
    Shutdown,
    Fatal(LivepeerError),
    /// The scheduler's capacity went to 0 for longer than the dwell time (other changes are
    /// handovers within the connection).
    Recapacity(u32),
    Fault(String),
}

pub(super) async fn run(
    cfg: TranscoderConfig,
    grant: watch::Receiver<u32>,
    pipeline: Arc<dyn SegmentPipeline>,
    sink: Arc<dyn SegmentSink>,
    shutdown: CancellationToken,
) -> Result<(), LivepeerError> {
    std::fs::create_dir_all(&cfg.work_dir).map_err(|source| LivepeerError::WorkDir {
        path: cfg.work_dir.display().to_string(),
        source,
    })?;
    let addrs: Vec<String> = std::iter::once(cfg.orch_addr.clone())
        .chain(cfg.fallback_addrs.iter().cloned())
        .collect();
    let names = addrs
        .iter()
        .map(|a| server_name(a))
        .collect::<Result<Vec<_>, _>>()?;
    let grpc_tls = tls::client_config(&cfg.tls, &[b"h2"])?;
    let http_tls = tls::client_config(&cfg.tls, &[b"h2", b"http/1.1"])?;
    if cfg.tls == TlsPolicy::AcceptSelfSigned {
        tracing::warn!(orch = %addrs.join(","), "{}", cfg.tls.describe());
    } else {
        tracing::info!(orch = %addrs.join(","), "{}", cfg.tls.describe());
    }
    // One state per orchestrator (its sessions, its upload address); the bound on tasks in
    // flight is shared.
    let in_flight = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
    let drain = Arc::new(Drain::default());
    let shareds: Vec<Arc<Shared>> = addrs
        .iter()
        .map(|a| {
            Arc::new(Shared {
                in_flight: in_flight.clone(),
                cfg: TranscoderConfig {
                    orch_addr: a.clone(),
                    ..cfg.clone()
                },
                pipeline: pipeline.clone(),
                sink: sink.clone(),
                sessions: Sessions::default(),
                drain: drain.clone(),
                shutdown: shutdown.clone(),
            })
        })
        .collect();
    // What is registered follows the scheduler's grant, but goes down only as streams end.
    let mut capacity = follow_grant(grant, shareds.clone(), shutdown.clone());
    let tracker = TaskTracker::new();
    let mut backoff = cfg.backoff_initial;
    let link = cfg.link.clone();
    let mut current = 0usize;
    // Consecutive failed connections; a full round of them means back off.
    let mut failed_in_a_row = 0usize;
    // Whether the orchestrator has seen our secret yet (a registration, or the check below).
    let mut secret_checked = false;
    let result = loop {
        let shared = &shareds[current];
        if *capacity.borrow() == 0 {
            if !secret_checked {
                // Nothing granted yet, but a typo in the secret must not wait for capacity:
                // go-livepeer checks the secret before the capacity, so a registration with
                // capacity 0 answers "invalid secret" or "zero capacity" and keeps nothing.
                link.set_state("checking_secret");
                let ended = connection(
                    shared,
                    0,
                    &capacity,
                    &tracker,
                    &names[current],
                    &grpc_tls,
                    &http_tls,
                )
                .await;
                match ended {
                    Ended::Shutdown => break Ok(()),
                    Ended::Fatal(e @ LivepeerError::InvalidSecret { .. }) => {
                        link.update(|s| {
                            s.state = "fatal";
                            s.last_fault = Some(e.to_string());
                        });
                        break Err(e);
                    }
                    Ended::Fatal(LivepeerError::ZeroCapacity { .. }) => {
                        tracing::info!(orch = %shared.cfg.orch_addr, "the orchestrator accepts our secret; waiting for capacity");
                    }
                    Ended::Fatal(e) => break Err(e),
                    // Not reachable now: the secret is checked at the first registration.
                    Ended::Fault(reason) => {
                        tracing::info!(orch = %shared.cfg.orch_addr, %reason, "cannot check the secret yet; waiting for capacity")
                    }
                    Ended::Recapacity(_) => {}
                }
            }
            link.set_state("waiting_for_capacity");
        }
        let Some(cap) = wait_positive(&mut capacity, &shutdown).await else {
            break Ok(());
        };
        drain.set_registered(cap);
        link.update(|s| {
            s.state = "connecting";
            s.registered_capacity = cap;
            s.registrations += 1;
            s.orch_addr = shared.cfg.orch_addr.clone();
        });
        let started = Instant::now();
        secret_checked = true;
        let ended = connection(
            shared,
            cap,
            &capacity,
            &tracker,
            &names[current],
            &grpc_tls,
            &http_tls,
        )
        .await;
        drain.set_registered(0);
        match ended {
            Ended::Shutdown => break Ok(()),
            Ended::Fatal(e) => {
                link.update(|s| {
                    s.state = "fatal";
                    s.last_fault = Some(e.to_string());
                });
                break Err(e);
            }
            Ended::Recapacity(new) => {
                // Only a change to 0 ends a connection; other changes are handovers.
                tracing::info!(
                    from = cap,
                    to = new,
                    "capacity granted is 0 for longer than the dwell time; unregistered"
                );
                backoff = cfg.backoff_initial;
                failed_in_a_row = 0;
            }
            Ended::Fault(reason) => {
                // A connection that served for a while resets the backoff: this is a new fault.
                if started.elapsed() >= Duration::from_secs(10) {
                    backoff = cfg.backoff_initial;
                    failed_in_a_row = 0;
                }
                failed_in_a_row += 1;
                let from = shared.cfg.orch_addr.clone();
                current = (current + 1) % addrs.len();
                link.update(|s| {
                    s.state = "backoff";
                    s.last_fault = Some(reason.clone());
                });
                if failed_in_a_row < addrs.len() {
                    tracing::warn!(orch = %from, %reason, next = %addrs[current], "orchestrator connection lost; failing over to the next orchestrator");
                    continue;
                }
                failed_in_a_row = 0;
                tracing::warn!(orch = %from, %reason, retry_in_ms = backoff.as_millis() as u64, "orchestrator connection lost; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => break Ok(()),
                }
                backoff = (backoff * 2).min(cfg.backoff_max);
            }
        }
    };
    // On shutdown the engine cancels tasks in flight at once; each still posts an error
    // part, so the orchestrator can hand the segment to another transcoder right away.
    tracker.close();
    tracker.wait().await;
    if result.is_ok() {
        link.set_state("stopped");
    }
    result
}

pub(super) fn server_name(addr: &str) -> Result<ServerName<'static>, LivepeerError> {
    let bad = || {
        LivepeerError::Config(format!(
            "--orch-addr {addr:?} is not HOST:PORT (e.g. pool.example.com:8935 or 10.0.0.5:8935)"
        ))
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    ServerName::try_from(host.to_string()).map_err(|_| bad())
}

/// The capacity to register, recomputed when the scheduler's grant changes and as streams
/// start and end ([`Drain::effective`]); a session whose next segment is overdue (4 × its
/// duration) has stopped streaming, teardown or not.
fn follow_grant(
    mut grant: watch::Receiver<u32>,
    shareds: Vec<Arc<Shared>>,
    shutdown: CancellationToken,
) -> watch::Receiver<u32> {
    let Some(first) = shareds.first() else {
        return grant;
    };
    let drain = first.drain.clone();
    let link = first.cfg.link.clone();
    drain.set_target(*grant.borrow_and_update());
    let (tx, rx) = watch::channel(drain.effective(0));
    tokio::spawn(async move {
        let mut grant_open = true;
        let mut shown = (false, 0);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = grant.changed(), if grant_open => grant_open = r.is_ok(),
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            drain.set_target(*grant.borrow_and_update());
            let streaming = shareds.iter().map(|s| s.sessions.streaming()).sum();
            let v = drain.effective(streaming);
            tx.send_if_modified(|cur| std::mem::replace(cur, v) != v);
            let now = (drain.draining(), drain.refused_total());
            if now != shown {
                if now.0 != shown.0 {
                    tracing::info!(
                        draining = now.0,
                        streaming,
                        capacity = v,
                        "Livepeer capacity drain"
                    );
                }
                shown = now;
                link.update(|s| {
                    s.draining = now.0;
                    s.streams_refused_draining = now.1;
                });
            }
        }
    });
    rx
}

/// Waits until the scheduler grants a non-zero capacity; `None` on shutdown.
async fn wait_positive(rx: &mut watch::Receiver<u32>, shutdown: &CancellationToken) -> Option<u32> {
    let mut logged = false;
    loop {
        let v = *rx.borrow_and_update();
        if v > 0 {
            return Some(v);
        }
        if !logged {
            tracing::info!(
                "capacity is 0: staying unregistered until the scheduler grants capacity"
            );
            logged = true;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() {
                shutdown.cancelled().await;
                return None;
            },
            _ = shutdown.cancelled() => return None,
        }
    }
}

/// Resolves with the new capacity once it has differed from `registered` for `dwell`.
async fn wait_capacity_change(
    mut rx: watch::Receiver<u32>,
    registered: u32,
    dwell: Duration,
) -> u32 {
    'outer: loop {
        if rx.changed().await.is_err() {
            // The scheduler is gone; keep what we registered.
            std::future::pending::<()>().await;
        }
        let mut v = *rx.borrow_and_update();
        if v == registered {
            continue;
        }
        let until = tokio::time::Instant::now() + dwell;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return v,
                r = rx.changed() => {
                    if r.is_err() {
                        tokio::time::sleep_until(until).await;
                        return v;
                    }
                    v = *rx.borrow_and_update();
                    if v == registered {
                        continue 'outer;
                    }
                }
            }
        }
    }
}

/// go-livepeer refuses with plain errors ("invalid secret", "zero capacity"), which gRPC
/// carries as code Unknown; those two are fatal, anything else is a fault to retry.
fn classify(addr: &str, status: tonic::Status, capacity: u32) -> Ended {
    match status.message() {
        "invalid secret" => Ended::Fatal(LivepeerError::InvalidSecret {
            addr: addr.to_string(),
        }),
        "zero capacity" => Ended::Fatal(LivepeerError::ZeroCapacity {
            addr: addr.to_string(),
            capacity,
        }),
        _ => {
            let mut reason = format!("{:?}: {}", status.code(), status.message());
            if let Some(src) = std::error::Error::source(&status) {
                reason.push_str(": ");
                reason.push_str(&chain(src));
            }
            Ended::Fault(reason)
        }
    }
}

/// Why [`grpc_channel`] gave no channel.
pub(super) enum ChannelError {
    /// `--orch-addr` is not an address: fatal.
    BadAddress(LivepeerError),
    /// Connecting failed: a fault to retry.
    Unreachable(String),
}

/// The gRPC channel of both links (remote transcoder and AI worker): TCP with
/// `TCP_NODELAY`, our own TLS config (certificate pinning, h2), the link's HTTP/2
/// keep-alive.
pub(super) async fn grpc_channel(
    addr: &str,
    tls: &Arc<rustls::ClientConfig>,
    name: &ServerName<'static>,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
) -> Result<tonic::transport::Channel, ChannelError> {
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| {
            ChannelError::BadAddress(LivepeerError::Config(format!(
                "--orch-addr {addr:?} is not a valid address: {e}"
            )))
        })?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(keepalive_interval)
        .keep_alive_timeout(keepalive_timeout)
        .keep_alive_while_idle(true);
    let connector = {
        let (addr, tls, name) = (addr.to_string(), tls.clone(), name.clone());
        tower::service_fn(move |_: http::Uri| {
            let (addr, tls, name) = (addr.clone(), tls.clone(), name.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(addr.as_str()).await?;
                let _ = tcp.set_nodelay(true);
                let stream = tokio_rustls::TlsConnector::from(tls)
                    .connect(name, tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        })
    };
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| ChannelError::Unreachable(format!("cannot connect to {addr}: {}", chain(&e))))
}

/// The HTTPS client for segments, results and inputs, fresh per connection: after an
/// orchestrator restart (new certificate, dead pooled connections) nothing stale is reused.
pub(super) fn https_client(
    tls: &Arc<rustls::ClientConfig>,
) -> Result<reqwest::Client, LivepeerError> {
    reqwest::Client::builder()
        .use_preconfigured_tls((**tls).clone())
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| LivepeerError::Config(format!("HTTPS client setup failed: {}", chain(&e))))
}

async fn connection(
    shared: &Arc<Shared>,
    cap: u32,
    capacity: &watch::Receiver<u32>,
    tracker: &TaskTracker,
    server_name: &ServerName<'static>,
    grpc_tls: &Arc<rustls::ClientConfig>,
    http_tls: &Arc<rustls::ClientConfig>,
) -> Ended {
    let cfg = &shared.cfg;
    let channel = tokio::select! {
        r = grpc_channel(&cfg.orch_addr, grpc_tls, server_name, cfg.keepalive_interval, cfg.keepalive_timeout) => match r {
            Ok(c) => c,
            Err(ChannelError::BadAddress(e)) => return Ended::Fatal(e),
            Err(ChannelError::Unreachable(why)) => return Ended::Fault(why),
        },
        _ = shared.shutdown.cancelled() => return Ended::Shutdown,
    };
    let http = match https_client(http_tls) {
        Ok(c) => c,
        Err(e) => return Ended::Fatal(e),
    };
    // The price is asked on the same channel for as long as this connection lives.
    let quotes_stop = shared.shutdown.child_token();
    let _quotes_guard = quotes_stop.clone().drop_guard();
    if let Some(q) = cfg.price_quotes.clone() {
        tokio::spawn(ask_price(
            channel.clone(),
            q,
            cfg.orch_addr.clone(),
            cfg.price_interval,
            quotes_stop,
        ));
    }

    let register = |cap: u32| -> PendingRegistration {
        let request = RegisterRequest {
            secret: cfg.secret.clone(),
            capacity: i64::from(cap),
            capabilities: Some(Capabilities {
                bitstring: capability_bitstring(CAPABILITIES),
                version: cfg.version.clone(),
                ..Default::default()
            }),
            ethereum_address: cfg.eth_address.map(|a| a.to_vec()).unwrap_or_default(),
        };
        let mut client = TranscoderClient::new(channel.clone());
        Box::pin(async move { client.register_transcoder(request).await })
    };
    // Serves a notification carried by `on`, which notes whether it binds a stream there (a
    // new stream refused while draining does not).
    let serve = |on: Option<&mut Registration>, n: NotifySegment| {
        let refused = segment::refuse_new_stream(shared, &n);
        if let Some(reg) = on {
            reg.seen(&n, refused.is_none());
        }
        dispatch(shared, n, refused, &http, tracker);
    };
    tracing::info!(orch = %cfg.orch_addr, capacity = cap, version = %cfg.version, eth_address = ?cfg.eth_address, "registering as a remote transcoder; go-livepeer answers with the first segment");
    let mut active = Registration::new(cap, register(cap));
    // The registration being replaced, still serving its streams, and when it closes.
    let mut retiring: Option<(Registration, tokio::time::Instant)> = None;
    let mut change = Box::pin(wait_capacity_change(
        capacity.clone(),
        cap,
        cfg.capacity_dwell,
    ));
    loop {
        let close_old_at = retiring.as_ref().map(|(_, at)| *at);
        tokio::select! {
            ev = active.next() => match ev {
                // go-livepeer answers the call only with its first segment (or a refusal),
                // so being here without an error is being registered.
                Event::Opened => {
                    tracing::info!(orch = %cfg.orch_addr, capacity = active.cap, "notification stream open");
                    cfg.link.set_state("registered");
                }
                Event::Segment(n) => {
                    serve(Some(&mut active), *n);
                    // The new registration carried a segment: it is live, and the old one
                    // may close as soon as its streams are quiet.
                    if let Some((old, at)) = retiring.as_mut() {
                        *at = old.close_at(&active);
                    }
                }
                Event::Closed => return Ended::Fault("the orchestrator ended the stream".into()),
                Event::Failed(status) => return classify(&cfg.orch_addr, status, active.cap),
            },
            ev = next_of(&mut retiring) => match ev {
                Event::Opened => {}
                Event::Segment(n) => {
                    if let Some((old, at)) = retiring.as_mut() {
                        serve(Some(old), *n);
                        *at = old.close_at(&active);
                    }
                }
                // The orchestrator dropped the old registration itself: its streams rebind.
                Event::Closed | Event::Failed(_) => retiring = None,
            },
            _ = sleep_until_some(close_old_at) => {
                if let Some((old, _)) = retiring.take() {
                    old.close(|n| serve(None, n), &cfg.orch_addr);
                }
            }
            // One handover at a time: a change waits until the old registration is closed.
            new = &mut change, if retiring.is_none() => {
                if new == 0 {
                    return Ended::Recapacity(0);
                }
                tracing::info!(
                    orch = %cfg.orch_addr,
                    from = active.cap,
                    to = new,
                    "capacity changed for longer than the dwell time; registering the new capacity before closing the old registration"
                );
                shared.drain.set_registered(new);
                cfg.link.update(|s| {
                    s.registered_capacity = new;
                    s.registrations += 1;
                });
                let mut old = std::mem::replace(&mut active, Registration::new(new, register(new)));
                let at = old.close_at(&active);
                retiring = Some((old, at));
                change = Box::pin(wait_capacity_change(capacity.clone(), new, cfg.capacity_dwell));
            }
            _ = shared.shutdown.cancelled() => return Ended::Shutdown,
        }
    }
}

type PendingRegistration = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<tonic::Response<tonic::Streaming<NotifySegment>>, tonic::Status>,
            > + Send,
    >,
>;

/// One `RegisterTranscoder` call: pending until go-livepeer answers, then its stream.
struct Registration {
    cap: u32,
    pending: Option<PendingRegistration>,
    stream: Option<tonic::Streaming<NotifySegment>>,
    started: tokio::time::Instant,
    /// When it first carried a segment, so the orchestrator surely holds it.
    carried: Option<tokio::time::Instant>,
    bound: handover::Bound,
}

enum Event {
    Opened,
    Segment(Box<NotifySegment>),
    Closed,
    Failed(tonic::Status),
}

impl Registration {
    fn new(cap: u32, pending: PendingRegistration) -> Self {
        Registration {
            cap,
            pending: Some(pending),
            stream: None,
            started: tokio::time::Instant::now(),
            carried: None,
            bound: handover::Bound::default(),
        }
    }

    /// The next event; cancel-safe (the pending call and the stream keep their state).
    async fn next(&mut self) -> Event {
        if let Some(pending) = self.pending.as_mut() {
            let answered = pending.await;
            self.pending = None;
            return match answered {
                Ok(resp) => {
                    self.stream = Some(resp.into_inner());
                    Event::Opened
                }
                Err(status) => Event::Failed(status),
            };
        }
        let Some(stream) = self.stream.as_mut() else {
            return Event::Closed;
        };
        match stream.message().await {
            Ok(Some(n)) => Event::Segment(Box::new(n)),
            Ok(None) => Event::Closed,
            Err(status) => Event::Failed(status),
        }
    }

    /// Notes a notification it carried; `binds`: it is a teardown or a segment of a stream
    /// that runs here (a new stream refused while draining does not hold the registration
    /// open).
    fn seen(&mut self, n: &NotifySegment, binds: bool) {
        let now = tokio::time::Instant::now();
        self.carried.get_or_insert(now);
        if binds {
            self.bound.seen(n, now);
        }
    }

    /// When this (retiring) registration may close, given its successor `next`: once
    /// `next` is surely live, at the quietest moment of the streams still bound here, and
    /// never later than [`handover::MAX_WAIT`] past the overlap.
    fn close_at(&mut self, next: &Registration) -> tokio::time::Instant {
        let overlap_end = next.started + handover::OVERLAP;
        let earliest = next.carried.map_or(overlap_end, |t| t.min(overlap_end));
        self.bound
            .quiet_moment(earliest, tokio::time::Instant::now())
            .min(overlap_end + handover::MAX_WAIT)
    }

    /// Closes it, first serving every notification already received on it.
    fn close(mut self, mut serve: impl FnMut(NotifySegment), orch: &str) {
        let orphaned = self.bound.live(tokio::time::Instant::now());
        if let Some(stream) = self.stream.as_mut() {
            while let Some(Ok(Some(n))) = stream.message().now_or_never() {
                serve(n);
            }
        }
        tracing::info!(%orch, capacity = self.cap, streams_moving = orphaned, "previous registration closed; its streams continue on the new one");
    }
}

async fn next_of(r: &mut Option<(Registration, tokio::time::Instant)>) -> Event {
    match r {
        Some((reg, _)) => reg.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Asks `GetOrchestrator` at once and every `interval` until `stop`; each answer (or its
/// absence) goes to `quotes`. An orchestrator that refuses (no `Orchestrator` service, a
/// signature it does not accept, no free capacity) leaves the configured price in use.
async fn ask_price(
    channel: tonic::transport::Channel,
    quotes: Arc<dyn super::PriceQuotes>,
    orch_addr: String,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut client = OrchestratorClient::new(channel);
    let mut warned = false;
    loop {
        let asked = tokio::time::timeout(
            Duration::from_secs(10),
            client.get_orchestrator(quotes.request()),
        );
        let answer = tokio::select! {
            r = asked => r,
            _ = stop.cancelled() => return,
        };
        let quote = match answer {
            Ok(Ok(info)) => match info.price_info {
                Some(p) if p.pixels_per_unit > 0 && p.price_per_unit >= 0 => Ok(PriceQuote {
                    price_per_unit: p.price_per_unit as u64,
                    pixels_per_unit: p.pixels_per_unit as u64,
                    orchestrator: (info.address.len() == 20)
                        .then(|| alloy_primitives::Address::from_slice(&info.address)),
                }),
                Some(p) => Err(format!(
                    "its price_info is unusable (pricePerUnit {}, pixelsPerUnit {})",
                    p.price_per_unit, p.pixels_per_unit
                )),
                None => Err("its reply has no price_info".to_string()),
            },
            Ok(Err(status)) => Err(format!("{}: {}", status.code(), status.message())),
            Err(_) => Err("no answer within 10 s".to_string()),
        };
        match quote {
            Ok(q) => {
                tracing::info!(orch = %orch_addr, price_per_unit = q.price_per_unit, pixels_per_unit = q.pixels_per_unit, "the orchestrator quoted its price");
                warned = false;
                quotes.quoted(&orch_addr, Some(q));
            }
            Err(why) => {
                if !warned {
                    tracing::info!(orch = %orch_addr, %why, "the orchestrator gives no price over GetOrchestrator; jobs are valued at the configured [earnings] price");
                    warned = true;
                }
                quotes.quoted(&orch_addr, None);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Serves one notification; `refused`: a new stream refused while draining
/// ([`segment::refuse_new_stream`]), answered with an error part and no work.
fn dispatch(
    shared: &Arc<Shared>,
    n: NotifySegment,
    refused: Option<u32>,
    http: &reqwest::Client,
    tracker: &TaskTracker,
) {
    if let Some(session) = n.teardown_session() {
        let segments = shared.sessions.end(session);
        match segments {
            Some(segments) => tracing::info!(%session, segments, "session ended; state released"),
            None => tracing::debug!(%session, "teardown for a session we hold no state for"),
        }
        let (shared, session) = (shared.clone(), session.to_string());
        tracker.spawn(async move {
            if let Err(e) = shared
                .sink
                .session_ended(&session, segments.unwrap_or(0))
                .await
            {
                tracing::error!(%session, error = %e, "segment sink failed");
            }
        });
        return;
    }
    let received = Instant::now();
    let permit = shared.in_flight.clone().try_acquire_owned().ok();
    let span = tracing::info_span!("task", task_id = n.task_id, session = %n.session_key());
    tracker.spawn(
        segment::handle(shared.clone(), n, http.clone(), received, permit, refused)
            .instrument(span),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orch_addr_must_be_host_port() {
        assert!(server_name("pool.example.com:8935").is_ok());
        assert!(server_name("10.0.0.5:8935").is_ok());
        assert!(server_name("[::1]:8935").is_ok());
        for bad in ["pool.example.com", ":8935", "host:port", "host:99999"] {
            let err = server_name(bad).unwrap_err().to_string();
            assert!(err.contains("HOST:PORT"), "{bad}: {err}");
        }
    }

    #[test]
    fn refusals_are_fatal_with_what_to_fix_and_the_rest_is_retried() {
        match classify("o:8935", tonic::Status::unknown("zero capacity"), 0) {
            Ended::Fatal(e @ LivepeerError::ZeroCapacity { .. }) => {
                assert!(e.to_string().contains("--capacity"), "{e}")
            }
            _ => panic!("zero capacity must be fatal"),
        }
        match classify("o:8935", tonic::Status::unknown("invalid secret"), 1) {
            Ended::Fatal(e @ LivepeerError::InvalidSecret { .. }) => {
                assert!(e.to_string().contains("--orch-secret"), "{e}")
            }
            _ => panic!("invalid secret must be fatal"),
        }
        assert!(matches!(
            classify("o:8935", tonic::Status::unavailable("connection reset"), 1),
            Ended::Fault(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_change_must_hold_for_the_dwell_time() {
        let (tx, rx) = watch::channel(4u32);
        let dwell = Duration::from_secs(10);
        let waiter = tokio::spawn(async move { wait_capacity_change(rx, 4, dwell).await });
        // A blip shorter than the dwell time is ignored.
        tx.send(2).unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        tx.send(4).unwrap();
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(!waiter.is_finished(), "a 5 s blip must not re-register");
        // A lasting change is reported with its latest value.
        tx.send(3).unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        tx.send(1).unwrap();
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(waiter.await.unwrap(), 1);
    }

    fn never_answered() -> PendingRegistration {
        Box::pin(std::future::pending())
    }

    fn segment(session: &str) -> NotifySegment {
        NotifySegment {
            url: format!("https://o/segment/{session}.ts"),
            seg_data: Some(super::super::proto::SegData {
                duration: 1000,
                auth_token: Some(super::super::proto::AuthToken {
                    session_id: session.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn refused_new_streams_do_not_hold_the_old_registration_open() {
        let mut old = Registration::new(3, never_answered());
        // 24 new streams refused while draining, one segment each, at every phase.
        for k in 0..24u64 {
            old.seen(&segment(&format!("new-{k}")), false);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let next = Registration::new(1, never_answered());
        // Nothing runs here: it closes as soon as the new registration is surely live.
        assert_eq!(old.close_at(&next), next.started + handover::OVERLAP);
        // A running stream does hold it, until the quiet point of its cadence.
        old.seen(&segment("running"), true);
        let at = old.close_at(&next);
        assert!(
            at > next.started + handover::OVERLAP,
            "{:?}",
            at - next.started
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_close_is_fixed_once_the_new_registration_carried_a_segment() {
        let mut old = Registration::new(13, never_answered());
        let mut next = Registration::new(3, never_answered());
        tokio::time::sleep(Duration::from_millis(200)).await;
        next.seen(&segment("moved"), true);
        let live = tokio::time::Instant::now();
        // Five streams keep sending on the old registration every 200 ms for 5 s: the close
        // stays within one period (1 s) of the new one going live.
        let mut closes = Vec::new();
        for k in 0..25u64 {
            old.seen(&segment(&format!("s{}", k % 5)), true);
            let at = old.close_at(&next);
            closes.push(at);
            if tokio::time::Instant::now() >= at {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let last = *closes.last().unwrap();
        assert!(
            last - live <= Duration::from_millis(1200),
            "the close slid to {:?} after the new registration went live",
            last - live
        );
    }
}
