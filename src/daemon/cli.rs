//! `comine run [--config FILE] [--data-dir DIR] [--listen ADDR]`,
//! `comine status [--json] [--url URL]` and `comine calibrate [--json]`.
// Doc comments on the flags below are clap's `--help` text, written for a terminal
// (`<DIR>`, `[:gop=2s|intra]`), not rustdoc markup.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::admission::{Admission, SchedAdmission};
use super::api::auth;
use super::rendition_store::{EmbeddedStore, RenditionStore};
use super::{client, Daemon};
use crate::config::{Config, DataDirArgs};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub dirs: DataDirArgs,
    /// Override `[api] listen`, e.g. 127.0.0.1:0 for a free port (see <data>/api.addr).
    #[arg(long)]
    pub listen: Option<String>,
    /// Attach to a go-livepeer orchestrator as a remote transcoder (`--orch-addr` …); these
    /// flags win over `[livepeer]` in the config.
    #[command(flatten)]
    pub livepeer: crate::livepeer::LivepeerArgs,
    /// Probe every GPU's encoder at start (one Livepeer session's ladder of NVENC sessions,
    /// or libx264 on a CPU-only host) and exit if any fails, as go-livepeer's
    /// -testTranscoder does.
    #[arg(long)]
    pub test_transcoder: bool,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Print the raw JSON of GET /v1/status.
    #[arg(long)]
    pub json: bool,
    /// Daemon URL; default: the address in <data>/api.addr.
    #[arg(long)]
    pub url: Option<String>,
    #[command(flatten)]
    pub dirs: DataDirArgs,
}

#[derive(clap::Args, Debug)]
pub struct CalibrateArgs {
    /// Print the calibration as JSON (what <data>/calibration.json holds).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub dirs: DataDirArgs,
}

/// `comine calibrate`: measures every device again (whatever the cache says), caches the
/// result for `comine run`, and prints what `--capacity auto` will offer from it.
pub fn calibrate(args: CalibrateArgs) -> anyhow::Result<ExitCode> {
    use super::calibration::{self, ProbeSettings};
    let (config, data_dir) = args.dirs.load()?;
    let settings = ProbeSettings::from_config(&config.transcode)?;
    let choice: crate::gpu::BackendChoice = config.gpu.backend.parse()?;
    let mut telemetry = crate::gpu::open(&choice, &config.gpu)?;
    let snapshot = telemetry.poll();
    let measured = calibration::load_or_measure(&data_dir, &snapshot, &settings, true)?;
    if args.json {
        crate::util::outln!("{}", serde_json::to_string_pretty(&measured)?);
        return Ok(ExitCode::SUCCESS);
    }
    if measured.devices.is_empty() {
        crate::util::outln!(
            "nothing to calibrate: no host CPU or NVIDIA GPU in telemetry ({}); devices keep their configured rates",
            telemetry.source()
        );
    }
    let sched = &config.scheduler;
    for d in &measured.devices {
        crate::util::outln!(
            "device {} {} ({}): {} {:.1} Mpx/s -> {} Livepeer session(s) with --capacity auto",
            d.index,
            d.name,
            d.uuid,
            d.encoder,
            d.pixels_per_sec / 1e6,
            sched.sessions_for(sched.idle_budget(d.pixels_per_sec))
        );
    }
    crate::util::outln!(
        "cached in {}",
        data_dir.join(calibration::CACHE_FILE).display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Exit status of a fatal configuration error (sysexits' `EX_CONFIG`): a bad config file or
/// flag, a secret the orchestrator refused, a sealing setup that would endanger proofs.
/// The systemd unit lists it in `RestartPreventExitStatus=`, so such an error stops the
/// service with its message instead of restarting it every few seconds forever.
pub const EXIT_CONFIG: u8 = 78;

/// True when `err` (or anything in its chain) is an error only the operator can fix by
/// changing the configuration: restarting cannot help.
pub fn is_config_error(err: &anyhow::Error) -> bool {
    use crate::livepeer::LivepeerError;
    use crate::seal::SealError;
    err.chain().any(|e| {
        e.is::<crate::config::ConfigError>()
            || matches!(
                e.downcast_ref::<LivepeerError>(),
                Some(
                    LivepeerError::Config(_)
                        | LivepeerError::InvalidSecret { .. }
                        | LivepeerError::ZeroCapacity { .. }
                )
            )
            || matches!(
                e.downcast_ref::<SealError>(),
                Some(
                    SealError::Config(_)
                        | SealError::BadApiInfo(_)
                        | SealError::Unauthorized { .. }
                )
            )
            || matches!(
                e.downcast_ref::<crate::gpu::Error>(),
                Some(crate::gpu::Error::BadBackend(_) | crate::gpu::Error::UnknownPreset(_))
            )
            || matches!(
                e.downcast_ref::<crate::sched::ServiceError>(),
                Some(crate::sched::ServiceError::ControllerMismatch { .. })
            )
            || e.is::<ConfigFault>()
    })
}

/// A start-up refusal that is the configuration's fault (see [`EXIT_CONFIG`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigFault(pub String);

/// The process exit status for an error: [`EXIT_CONFIG`] for configuration errors, 1 otherwise.
pub fn exit_status(err: &anyhow::Error) -> ExitCode {
    if is_config_error(err) {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::FAILURE
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let (mut config, data_dir) = args.dirs.load()?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    if let Some(listen) = args.listen {
        config.api.listen = listen;
    }
    // `[livepeer]` in the config, under whatever the command line says.
    let lp = config.livepeer.under(&args.livepeer)?;
    // Flags are checked before anything starts: a bad secret file or address checksum
    // is a start-up error, not a log line an hour later.
    let attach = if lp.enabled() {
        let mut cfg = lp.to_config()?;
        let t = &config.transcode;
        cfg.work_dir = data_dir.join("livepeer").join("work");
        Some(super::livepeer::Attach {
            config: cfg,
            capacity: lp.capacity(),
            pipeline: super::livepeer::EnginePipeline::new(
                t.encoder_choice()?,
                t.x264_preset.clone(),
                t.gpu,
            )
            .with_decoder(t.decoder_choice()?, t.wall_bound())
            .warm(t.warm_sessions)
            .with_space_floor(data_dir.clone(), config.store.min_free_bytes),
        })
    } else {
        if args.livepeer.orch_secret.is_some() && std::env::var_os("COMINE_ORCH_SECRET").is_none() {
            return Err(ConfigFault("--orch-secret was given without --orch-addr HOST:PORT; add the orchestrator's address to attach to it".into()).into());
        }
        None
    };
    let loose = crate::paths::create_private_dir(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    if let Some(mode) = loose {
        tracing::warn!(
            dir = %data_dir.display(),
            mode = format_args!("{mode:o}"),
            "the data directory is open to other users; `chmod 700 {}` keeps spooled segments and the ledger private",
            data_dir.display()
        );
    }
    // One daemon per data directory (the database itself would let two share it).
    let _daemon_lock = lock_data_dir(&data_dir)?;
    let token_path = client::token_file(&data_dir, &config);
    let (token, created) = auth::load_or_create(&token_path)?;
    if created {
        tracing::info!(path = %token_path.display(), "generated a new API bearer token (mode 0600)");
    } else {
        tracing::info!(path = %token_path.display(), "API bearer token");
    }
    // The embedded UnixFS store always holds renditions; with `backend = "kubo"` they are
    // also queued for the node and a background pusher drains the queue with retries.
    let pusher = match config.store.backend.as_str() {
        "kubo" => {
            let k = &config.store.kubo;
            let client =
                crate::store::KuboClient::new(&k.api, Duration::from_secs(k.timeout_secs.max(1)))
                    .with_context(|| {
                    format!(
                        "[store.kubo] api = {:?} is not a usable Kubo RPC address",
                        k.api
                    )
                })?;
            Some((client, Duration::from_secs(k.push_interval_secs.max(1))))
        }
        _ => None,
    };
    let embedded = EmbeddedStore::open(
        &data_dir,
        pusher.as_ref().map(|(c, _)| c.base_url().to_string()),
    )
    .with_context(|| format!("cannot open the store under {}", data_dir.display()))?;
    let inner = embedded.inner().clone();
    let embedded = Arc::new(embedded);
    let store: Arc<dyn RenditionStore> = embedded.clone();
    // Worker threads are marked so a blocking database call on one is caught (see crate::db).
    let rt = crate::db::guard_runtime(&mut tokio::runtime::Builder::new_multi_thread())
        .enable_all()
        .build()?;
    let cancel = tokio_util::sync::CancellationToken::new();
    // The real scheduler: `[gpu]` telemetry, `[scheduler]` thresholds, `[seal]` controller.
    // It stops (and re-enables sealing) in `Admission::restore` at shutdown.
    // The dispatcher feeds it demand (what waits for admission) besides the load it admitted.
    let admission: Arc<dyn Admission> = Arc::new(
        rt.block_on(SchedAdmission::start(
            &config,
            &data_dir,
            config.concurrency(),
            cancel.child_token(),
        ))
        .context("cannot start the scheduler (see [gpu], [seal] and [scheduler] in the config)")?,
    );
    if args.test_transcoder {
        test_transcoder(&config, &admission)?;
    }
    // The public trustless gateway: its own listener, no token, pinned content only; bound
    // before anything is served so a taken port is a start-up error.
    let gateway_addr_file = data_dir.join("gateway.addr");
    let gateway_task = if config.gateway.listen.is_empty() {
        None
    } else {
        let listen = config.gateway.listen.clone();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(&listen))
            .with_context(|| {
                format!("cannot listen on {listen} for the gateway; change [gateway] listen, or leave it empty to serve no gateway")
            })?;
        let addr = listener.local_addr()?;
        crate::util::durable::write_durable(&gateway_addr_file, addr.to_string().as_bytes())?;
        tracing::info!(%addr, addr_file = %gateway_addr_file.display(), "trustless gateway listening (unauthenticated, pinned content only)");
        let (store, limits, stop) = (inner.clone(), config.gateway.limits(), cancel.clone());
        Some(rt.spawn(
            async move { crate::store::gateway::serve(listener, store, &limits, stop).await },
        ))
    };
    let push_task = pusher.map(|(client, every)| {
        tracing::info!(
            api = client.base_url(),
            "pushing renditions to the Kubo node"
        );
        rt.spawn(crate::store::queue::run_pusher(
            inner,
            client,
            every,
            cancel.clone(),
        ))
    });
    let gc_task = (config.store.gc_interval_hours > 0).then(|| {
        let every = Duration::from_secs(config.store.gc_interval_hours * 3600);
        // The first pass soon after start, so a daemon restarted daily still collects.
        let first = every.min(Duration::from_secs(300));
        rt.spawn(
            embedded
                .clone()
                .run_gc(config.store.retain_days, first, every, cancel.clone()),
        )
    });
    let served = rt.block_on(serve(config, data_dir, store, admission, token, attach));
    cancel.cancel();
    if let Some(task) = push_task {
        let _ = rt.block_on(task);
    }
    if let Some(task) = gc_task {
        let _ = rt.block_on(task);
    }
    if let Some(task) = gateway_task {
        match rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await }) {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gateway ended with an error"),
            Err(_) => tracing::warn!("gateway connections did not close in time"),
            _ => {}
        }
        let _ = std::fs::remove_file(&gateway_addr_file);
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

/// Holds `<data>/daemon.pid` locked (flock) for the daemon's lifetime, with our pid in it.
fn lock_data_dir(data_dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let path = data_dir.join("daemon.pid");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock only reads the descriptor, which `f` keeps open.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        anyhow::bail!(
            "another `comine run` (pid {}) uses the data directory {}; stop it or use another --data-dir",
            pid.trim(),
            data_dir.display()
        );
    }
    f.set_len(0)?;
    f.rewind()?;
    write!(f, "{}", std::process::id())?;
    Ok(f)
}

/// `--test-transcoder`: probes the configured encoder on every GPU telemetry reports (or
/// libx264 on a CPU-only host) with one Livepeer session's ladder of encoders at once.
/// Under `encoder = "auto"` a GPU whose NVENC does not open fails the probe: a silent CPU
/// fallback would take sealing's cores.
fn test_transcoder(config: &Config, admission: &Arc<dyn Admission>) -> anyhow::Result<()> {
    use crate::transcode::EncoderChoice;
    let choice = config.transcode.encoder_choice()?;
    let sessions = config.scheduler.encodes_per_session.max(1);
    let gpus: Vec<u32> = admission
        .status()
        .devices
        .iter()
        .filter(|g| !g.is_host())
        .map(|g| g.index)
        .collect();
    let (targets, wanted) = match (choice, gpus.is_empty()) {
        (EncoderChoice::X264, _) | (EncoderChoice::Auto, true) => {
            (vec![0], EncoderChoice::X264)
        }
        (EncoderChoice::Nvenc, true) => {
            return Err(ConfigFault(
                "--test-transcoder: [transcode] encoder = \"nvenc\" but telemetry sees no NVIDIA GPU; install the driver or use encoder = \"auto\"".into(),
            )
            .into())
        }
        (_, false) => (gpus, choice),
    };
    for gpu in targets {
        let r =
            crate::transcode::probe::encoder(wanted, gpu, sessions, &config.transcode.x264_preset)
                .with_context(|| {
                    format!("--test-transcoder: the encoder probe failed on GPU {gpu}")
                })?;
        if wanted != EncoderChoice::X264 && !r.all_nvenc() {
            anyhow::bail!(
                "--test-transcoder: GPU {gpu} cannot open {sessions} NVENC sessions ({}); segments would fall back to libx264 on the CPU. Check the driver and its NVENC session cap, or set [transcode] encoder = \"x264\"",
                r.fallback_reason.as_deref().unwrap_or("libx264 was used")
            );
        }
        tracing::info!(gpu, encoders = ?r.encoders, sessions = r.sessions, frames = r.frames, "--test-transcoder: encoder probe passed");
    }
    Ok(())
}

/// Runs the daemon until SIGTERM/SIGINT, then shuts down gracefully.
pub async fn serve(
    config: Config,
    data_dir: PathBuf,
    store: Arc<dyn RenditionStore>,
    admission: Arc<dyn Admission>,
    token: String,
    attach: Option<super::livepeer::Attach>,
) -> anyhow::Result<()> {
    let grace = Duration::from_secs(config.api.shutdown_grace_secs);
    let listen = config.api.listen.clone();
    let d = Daemon::open(config, data_dir.clone(), store, admission, token)?;
    let resumed = d.resume().await?;
    if resumed > 0 {
        tracing::info!(resumed, "resuming accepted jobs from the spool");
    }
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}; set [api] listen or --listen"))?;
    let addr = listener.local_addr()?;
    let _ = d.listen_addr.set(addr);
    let addr_file = client::api_addr_file(&data_dir);
    crate::util::durable::write_durable(&addr_file, addr.to_string().as_bytes())?;
    tracing::info!(%addr, data_dir = %data_dir.display(), addr_file = %addr_file.display(), "comine API listening");
    let dispatcher = d.spawn_dispatcher();
    // systemd (Type=notify): ready once serving; the watchdog is fed only while the daemon
    // makes progress, so a hang is restarted.
    let notifier = crate::util::sd_notify::Notifier::from_env();
    let watchdog_stop = tokio_util::sync::CancellationToken::new();
    if let Some(n) = &notifier {
        let _ = n.notify(&format!(
            "READY=1\nSTATUS=serving on {addr}; {resumed} jobs resumed"
        ));
        if let Some(interval) = crate::util::sd_notify::watchdog_interval() {
            tokio::spawn(super::watchdog::run(
                d.clone(),
                n.clone(),
                interval,
                watchdog_stop.clone(),
            ));
        }
    }
    // Pool statement polling, chain checks and the daily receipt root, until shutdown.
    let earnings_stop = tokio_util::sync::CancellationToken::new();
    let earnings_tasks = d.earnings.spawn(earnings_stop.clone());
    let lp_stop = tokio_util::sync::CancellationToken::new();
    // The AI side when [ai] lists models (`/v1/ai/upscale`), and with an orchestrator the
    // AI worker: same TLS, secret and backoff as the transcoder link.
    let ai_stop = tokio_util::sync::CancellationToken::new();
    let mut ai_task = if d.config.ai.enabled() {
        super::ai::start(&d, attach.as_ref().map(|a| &a.config), ai_stop.clone()).await?
    } else {
        None
    };
    let mut lp_task = attach.map(|a| {
        tracing::info!(orch = %a.config.orch_addr, capacity = ?a.capacity, "attaching to the Livepeer orchestrator");
        let sessions = d.admission.livepeer_sessions();
        super::livepeer::start(&d, a, sessions, lp_stop.clone())
    });
    let app = super::api::router(d.clone());
    let stop = d.intake_stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    // A fatal refusal from the orchestrator (bad secret, zero capacity) stops the daemon
    // with its message, so a supervisor shows the misconfiguration instead of a daemon
    // that runs but never earns.
    // The AI-worker link's refusals (an invalid secret) are fatal the same way.
    let mut fatal = None;
    tokio::select! {
        _ = wait_for_signal() => {}
        r = until_done(lp_task.as_mut()) => {
            lp_task = None;
            match r {
                Ok(Err(e)) => fatal = Some(anyhow::Error::new(e)),
                Ok(Ok(())) => {}
                Err(e) => fatal = Some(anyhow::anyhow!("the Livepeer client task failed: {e}")),
            }
        }
        r = until_done(ai_task.as_mut()) => {
            ai_task = None;
            match r {
                Ok(Err(e)) => fatal = Some(anyhow::Error::new(e).context("the Livepeer AI-worker link was refused")),
                Ok(Ok(())) => {}
                Err(e) => fatal = Some(anyhow::anyhow!("the Livepeer AI-worker task failed: {e}")),
            }
        }
    }
    if let Some(n) = &notifier {
        let _ = n.notify("STOPPING=1\nSTATUS=stopping: draining running jobs");
    }
    // AI jobs in flight are answered (finished within the grace, else an error) before the
    // worker unregisters.
    ai_stop.cancel();
    if let Some(task) = ai_task {
        match tokio::time::timeout(grace + Duration::from_secs(15), task).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "AI worker ended with an error"),
            Err(_) => tracing::warn!("AI worker did not stop in time"),
            _ => {}
        }
    }
    // Livepeer first: segments in flight are cancelled and answered with error parts, so
    // the orchestrator hands them to another transcoder at once instead of waiting.
    lp_stop.cancel();
    if let Some(task) = lp_task {
        match tokio::time::timeout(Duration::from_secs(15), task).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "Livepeer client ended with an error"),
            Err(_) => tracing::warn!("Livepeer client did not stop in time"),
            _ => {}
        }
    }
    d.shutdown(grace).await;
    watchdog_stop.cancel();
    let _ = dispatcher.await;
    earnings_stop.cancel();
    for t in earnings_tasks {
        if tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .is_err()
        {
            tracing::warn!("an earnings task did not stop in time");
        }
    }
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
        _ => tracing::warn!("HTTP connections did not close in time"),
    }
    let _ = std::fs::remove_file(&addr_file);
    match fatal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A task's end, or never when there is no task.
async fn until_done<T>(
    task: Option<&mut tokio::task::JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (config, data_dir) = args.dirs.load_for_client()?;
    let text = client::get_text_at(&data_dir, &config, args.url.as_deref(), "/v1/status")?;
    if args.json {
        crate::util::outln!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let v: serde_json::Value = serde_json::from_str(&text).context("status is not JSON")?;
    print_status(&v)?;
    Ok(ExitCode::SUCCESS)
}

fn print_status(v: &serde_json::Value) -> anyhow::Result<()> {
    crate::util::out!("{}", render_status(v));
    Ok(())
}

/// A reading as text, or `-` when the daemon could not read it (null or absent).
fn known(v: Option<&serde_json::Value>, f: impl Fn(f64) -> String) -> String {
    v.and_then(serde_json::Value::as_f64)
        .map(f)
        .unwrap_or_else(|| "-".into())
}

/// `comine status`'s human summary of `/v1/status`: one line per subject, `-` for anything
/// the daemon could not read.
pub fn render_status(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let s = |p: &str| v.pointer(p).cloned().unwrap_or(serde_json::Value::Null);
    let text = |p: &str| match v.pointer(p) {
        Some(serde_json::Value::String(x)) => x.clone(),
        Some(serde_json::Value::Null) | None => "-".into(),
        Some(x) => x.to_string(),
    };
    let _ = writeln!(
        o,
        "comine {} on {}, up {}s, data {}",
        text("/version"),
        text("/listen"),
        text("/uptime_secs"),
        text("/data_dir")
    );
    let drain = known(v.pointer("/queue/drain_secs"), |x| format!("{x:.0}s"));
    let _ = writeln!(
        o,
        "queue: {} waiting (new submissions max {}), {} running, capacity {}; backlog drains in {drain}{}",
        text("/queue/depth"),
        text("/queue/max"),
        text("/queue/running"),
        text("/queue/capacity"),
        match v.pointer("/queue/resumed_at_start").and_then(|x| x.as_u64()) {
            Some(n) if n > 0 => format!(" ({n} resumed at start)"),
            _ => String::new(),
        }
    );
    if let Some(jobs) = v.pointer("/jobs").and_then(|j| j.as_object()) {
        let parts: Vec<String> = jobs.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let parts = if parts.is_empty() {
            "none yet".to_string()
        } else {
            parts.join(", ")
        };
        let _ = writeln!(o, "jobs: {parts}");
    }
    let _ = writeln!(
        o,
        "today: {} segments, {} encoded pixels, {} wei estimated",
        text("/pixels_today/segments"),
        text("/pixels_today/encoded_pixels"),
        text("/pixels_today/earnings_wei")
    );
    match s("/devices").as_array() {
        Some(d) if !d.is_empty() => {
            for g in d {
                let pct = |k: &str| known(g.get(k), |x| format!("{:.0}%", x * 100.0));
                let host = g["source"].as_str() == Some("host");
                let label = if host { "host" } else { "gpu" };
                let mut line = format!(
                    "{label} {}: {} util {}",
                    g["index"],
                    g["name"].as_str().unwrap_or(""),
                    pct("utilization")
                );
                // A CPU has no encoder engine: no enc/dec/session figures for it.
                if !host {
                    let _ = write!(
                        line,
                        " enc {} dec {} {} sessions",
                        pct("encoder_utilization"),
                        pct("decoder_utilization"),
                        known(g.get("encoder_sessions"), |x| format!("{x:.0}"))
                    );
                }
                let _ = write!(
                    line,
                    " {} W {} °C ({}){}",
                    known(g.get("power_watts"), |x| format!("{x:.1}")),
                    known(g.get("temperature_celsius"), |x| format!("{x:.0}")),
                    g["source"].as_str().unwrap_or("telemetry"),
                    if g["proof_active"].as_bool() == Some(true) {
                        ", PROOF RUNNING"
                    } else {
                        ""
                    }
                );
                let _ = writeln!(o, "{line}");
            }
        }
        _ => {
            let _ = writeln!(
                o,
                "devices: none reported (scheduler: {})",
                text("/scheduler")
            );
        }
    }
    match v.pointer("/proofs") {
        Some(p) if !p.is_null() => {
            let sources: Vec<&str> = p["sources"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            let line = match p["safe_profile"].as_str() {
                Some(why) => format!("proofs: PoSt-safe profile ({why})"),
                None if sources.is_empty() => "proofs: -".to_string(),
                None => format!("proofs: watched through {}", sources.join(", ")),
            };
            let _ = writeln!(o, "{line}");
        }
        _ => {}
    }
    if let Some(sealing) = v.pointer("/sealing").and_then(|x| x.as_object()) {
        if !sealing.is_empty() {
            let parts: Vec<String> = sealing
                .iter()
                .map(|(k, n)| format!("{n} task types {k}"))
                .collect();
            let paused = match v.pointer("/sealing_paused").and_then(|x| x.as_bool()) {
                Some(true) => "paused by comine",
                Some(false) => "running",
                None => "-",
            };
            let _ = writeln!(
                o,
                "sealing: {paused} (controller confirms: {})",
                parts.join(", ")
            );
        }
    }
    // The most recent decisions, oldest first: what the scheduler did and why.
    if let Some(decisions) = v.pointer("/decisions").and_then(|d| d.as_array()) {
        let recent: Vec<&serde_json::Value> = decisions.iter().rev().take(3).collect();
        if !recent.is_empty() {
            let _ = writeln!(o, "recent decisions:");
        }
        for d in recent.into_iter().rev() {
            let limits: Vec<String> = d["devices"]
                .as_array()
                .map(|devs| {
                    devs.iter()
                        .filter_map(|dev| {
                            let reasons: Vec<&str> = dev["reasons"]
                                .as_array()?
                                .iter()
                                .filter_map(|r| r.as_str())
                                .collect();
                            (!reasons.is_empty()).then(|| {
                                // A CPU standing in for a GPU is named as what it is.
                                let kind = if dev["source"] == "host" {
                                    "host"
                                } else {
                                    "gpu"
                                };
                                format!("{kind} {}: {}", dev["index"], reasons.join("; "))
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let what = match d["sealing"]["reason"].as_str() {
                Some(r) => r.to_string(),
                // A decision record of another admission (tests): its own words.
                None => d["decision"].as_str().unwrap_or("-").to_string(),
            };
            let _ = writeln!(
                o,
                "  #{} {}{}",
                text_of(&d["seq"]),
                what,
                if limits.is_empty() {
                    String::new()
                } else {
                    format!("; {}", limits.join(", "))
                }
            );
        }
    }
    let store = s("/store");
    if !store.is_null() {
        let queue = match store["push_queue"].as_u64() {
            Some(n) => format!(", {n} waiting for the Kubo node"),
            None => String::new(),
        };
        let _ = writeln!(
            o,
            "store: {} at {}{}{}",
            store["backend"].as_str().unwrap_or("-"),
            store["dir"].as_str().unwrap_or("-"),
            store["kubo_api"]
                .as_str()
                .map(|k| format!(", pushing to {k}"))
                .unwrap_or_default(),
            queue
        );
    }
    if let Some(post) = v.pointer("/post").filter(|p| !p.is_null()) {
        match serde_json::from_value::<crate::post::Report>(post.clone()) {
            Ok(r) => {
                let _ = writeln!(o, "{}", r.summary());
            }
            Err(e) => {
                let _ = writeln!(o, "WindowPoSt: status not understood ({e})");
            }
        }
    }
    if let Some(lp) = v.pointer("/livepeer").filter(|l| !l.is_null()) {
        let g = |p: &str| match lp.pointer(p) {
            Some(serde_json::Value::String(x)) => x.clone(),
            Some(serde_json::Value::Null) | None => "-".into(),
            Some(x) => x.to_string(),
        };
        let _ = writeln!(
            o,
            "livepeer: {} {} (capacity {} [{}]); segments {} accounted, {} failed; {} encoded pixels{}",
            g("/orch_addr"),
            g("/link/state"),
            g("/capacity"),
            g("/capacity_mode"),
            g("/segments/accounted"),
            g("/segments/failed"),
            g("/segments/encoded_pixels"),
            lp.pointer("/link/last_fault")
                .and_then(|f| f.as_str())
                .map(|f| format!("; last fault: {f}"))
                .unwrap_or_default(),
        );
        if lp.pointer("/link/draining") == Some(&serde_json::Value::Bool(true)) {
            let _ = writeln!(
                o,
                "livepeer: draining for a proof: capacity registered {}, {} new streams refused",
                g("/link/registered_capacity"),
                g("/link/streams_refused_draining"),
            );
        }
    }
    // The AI models' VRAM leases: which the scheduler lets comine hold, and why not.
    if let Some(models) = v.pointer("/ai/leases/models").and_then(|m| m.as_array()) {
        for m in models {
            let field = |p: &str| text_of(m.pointer(p).unwrap_or(&serde_json::Value::Null));
            let held = m.pointer("/held") == Some(&serde_json::Value::Bool(true));
            let _ = writeln!(
                o,
                "ai model {} on GPU {}: {} ({} in flight){}",
                field("/model_id"),
                field("/device"),
                if held { "VRAM held" } else { "VRAM released" },
                field("/in_flight"),
                m.pointer("/reason")
                    .and_then(|r| r.as_str())
                    .map(|r| format!("; {r}"))
                    .unwrap_or_default(),
            );
        }
    }
    o
}

fn text_of(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        x => x.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_human_with_dashes_for_unknowns() {
        let v = serde_json::json!({
            "version": "0.1.0", "listen": "127.0.0.1:9470", "uptime_secs": 5,
            "data_dir": "/var/lib/comine",
            "queue": {"depth": 3, "max": 32, "running": 1, "capacity": 1,
                      "resumed_at_start": 3, "drain_secs": null},
            "jobs": {"done": 4},
            "pixels_today": {"segments": 4, "encoded_pixels": 100, "earnings_wei": "0"},
            "scheduler": "sched/host",
            "devices": [{"index": 0, "name": "host CPU", "source": "host",
                         "utilization": 0.5, "encoder_utilization": null,
                         "power_watts": null, "temperature_celsius": null,
                         "encoder_sessions": null, "proof_active": false}],
            "proofs": {"sources": [], "safe_profile": "no proof source configured"},
            "sealing": {"enabled": 4}, "sealing_paused": null,
            "decisions": [{"seq": 7, "sealing": {"reason": "live demand 0% of capacity, sealing Enabled"},
                           "devices": [{"index": 0, "reasons": ["PoSt-safe profile (no proof source configured)"]}]}],
            "store": {"backend": "embedded", "dir": "/var/lib/comine/store", "kubo_api": null, "push_queue": 0},
            "livepeer": null
        });
        let out = render_status(&v);
        assert!(
            out.contains("host 0: host CPU util 50% - W - °C (host)"),
            "{out}"
        );
        assert!(!out.contains("0.0 W") && !out.contains("enc 100%"), "{out}");
        assert!(
            out.contains("backlog drains in - (3 resumed at start)"),
            "{out}"
        );
        assert!(
            out.contains("proofs: PoSt-safe profile (no proof source configured)"),
            "{out}"
        );
        assert!(
            out.contains("sealing: - (controller confirms: 4 task types enabled)"),
            "{out}"
        );
        assert!(out.contains("  #7 live demand 0% of capacity"), "{out}");
        assert!(
            out.contains("store: embedded at /var/lib/comine/store, 0 waiting"),
            "{out}"
        );
        assert!(!out.contains("{\""), "raw JSON in the human status:\n{out}");
    }

    #[test]
    fn status_shows_a_livepeer_drain_and_the_ai_leases() {
        let v = serde_json::json!({
            "livepeer": {"orch_addr": "o:8935", "capacity": 1, "capacity_mode": "auto",
                         "segments": {"accounted": 9, "failed": 0, "encoded_pixels": 5},
                         "link": {"state": "registered", "registered_capacity": 2,
                                  "draining": true, "streams_refused_draining": 31,
                                  "last_fault": null}},
            "ai": {"leases": {"models": [
                {"model_id": "sd-turbo", "device": 0, "held": false, "in_flight": 0,
                 "reason": "WindowPoSt deadline 33 opens in 11m40s"},
                {"model_id": "esrgan", "device": 0, "held": true, "in_flight": 2, "reason": null}
            ]}}
        });
        let out = render_status(&v);
        assert!(
            out.contains(
                "livepeer: draining for a proof: capacity registered 2, 31 new streams refused"
            ),
            "{out}"
        );
        assert!(
            out.contains("ai model sd-turbo on GPU 0: VRAM released (0 in flight); WindowPoSt deadline 33 opens in 11m40s"),
            "{out}"
        );
        assert!(
            out.contains("ai model esrgan on GPU 0: VRAM held (2 in flight)\n"),
            "{out}"
        );
        let calm = serde_json::json!({"livepeer": {"link": {"draining": false}}, "ai": null});
        let out = render_status(&calm);
        assert!(
            !out.contains("draining") && !out.contains("ai model"),
            "{out}"
        );
    }

    #[test]
    fn config_errors_exit_with_ex_config() {
        let e = anyhow::Error::new(crate::config::ConfigError::Value {
            key: "api.queue_depth",
            value: "0".into(),
            why: "must be at least 1".into(),
        })
        .context("loading the config");
        assert!(is_config_error(&e));
        let secret = anyhow::Error::new(crate::livepeer::LivepeerError::InvalidSecret {
            addr: "o:8935".into(),
        });
        assert!(is_config_error(&secret));
        let io = anyhow::anyhow!("cannot listen on 127.0.0.1:9470");
        assert!(!is_config_error(&io));
        assert_eq!(exit_status(&secret), ExitCode::from(EXIT_CONFIG));
    }
}
