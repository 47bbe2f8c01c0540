//! `comine run [--config FILE] [--data-dir DIR] [--listen ADDR]` and
//! `comine status [--json] [--url URL]`.
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
use super::{client, resolve_data_dir, Daemon};
use crate::config::Config;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// TOML config (every key: deploy/comine.example.toml). Without it, defaults.
    #[arg(long, env = "COMINE_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = crate::paths::DATA_DIR_ENV)]
    pub data_dir: Option<PathBuf>,
    /// Override `[api] listen`, e.g. 127.0.0.1:0 for a free port (see <data>/api.addr).
    #[arg(long)]
    pub listen: Option<String>,
    /// Attach to a go-livepeer orchestrator as a remote transcoder (`--orch-addr` …).
    #[command(flatten)]
    pub livepeer: crate::livepeer::LivepeerArgs,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Print the raw JSON of GET /v1/status.
    #[arg(long)]
    pub json: bool,
    /// Daemon URL; default: the address in <data>/api.addr.
    #[arg(long)]
    pub url: Option<String>,
    #[arg(long, env = "COMINE_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = crate::paths::DATA_DIR_ENV)]
    pub data_dir: Option<PathBuf>,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.api.listen = listen;
    }
    let data_dir = resolve_data_dir(args.data_dir, &config);
    // Flags are checked before anything starts: a bad secret file or address checksum
    // is a start-up error, not a log line an hour later.
    let attach = if args.livepeer.enabled() {
        let mut cfg = args.livepeer.to_config()?;
        let t = &config.transcode;
        cfg.work_dir = data_dir.join("livepeer").join("work");
        Some(super::livepeer::Attach {
            config: cfg,
            capacity: args.livepeer.capacity,
            pipeline: super::livepeer::EnginePipeline::new(
                t.encoder_choice()?,
                t.x264_preset.clone(),
                t.gpu,
            ),
        })
    } else {
        if args.livepeer.orch_secret.is_some() && std::env::var_os("COMINE_ORCH_SECRET").is_none() {
            anyhow::bail!("--orch-secret was given without --orch-addr HOST:PORT; add the orchestrator's address to attach to it");
        }
        None
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
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
        rt.spawn(embedded.clone().run_gc(
            config.store.retain_days,
            first,
            every,
            cancel.clone(),
        ))
    });
    let served = rt.block_on(serve(config, data_dir, store, admission, token, attach));
    cancel.cancel();
    if let Some(task) = push_task {
        let _ = rt.block_on(task);
    }
    if let Some(task) = gc_task {
        let _ = rt.block_on(task);
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
    let lp_stop = tokio_util::sync::CancellationToken::new();
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
    let mut fatal = None;
    match lp_task.as_mut() {
        Some(task) => tokio::select! {
            _ = wait_for_signal() => {}
            r = task => {
                lp_task = None;
                match r {
                    Ok(Err(e)) => fatal = Some(anyhow::Error::new(e)),
                    Ok(Ok(())) => {}
                    Err(e) => fatal = Some(anyhow::anyhow!("the Livepeer client task failed: {e}")),
                }
            }
        },
        None => wait_for_signal().await,
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
    let _ = dispatcher.await;
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
    let config = Config::load(args.config.as_deref())?;
    let data_dir = resolve_data_dir(args.data_dir, &config);
    let text = client::get_text_at(&data_dir, &config, args.url.as_deref(), "/v1/status")?;
    if args.json {
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let v: serde_json::Value = serde_json::from_str(&text).context("status is not JSON")?;
    print_status(&v);
    Ok(ExitCode::SUCCESS)
}

fn print_status(v: &serde_json::Value) {
    let s = |p: &str| v.pointer(p).cloned().unwrap_or(serde_json::Value::Null);
    println!(
        "comine {} on {}, up {}s, data {}",
        s("/version").as_str().unwrap_or("?"),
        s("/listen").as_str().unwrap_or("?"),
        s("/uptime_secs"),
        s("/data_dir").as_str().unwrap_or("?")
    );
    println!(
        "queue: {} waiting (max {}), {} running, capacity {}",
        s("/queue/depth"),
        s("/queue/max"),
        s("/queue/running"),
        s("/queue/capacity")
    );
    if let Some(jobs) = v.pointer("/jobs").and_then(|j| j.as_object()) {
        let parts: Vec<String> = jobs.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let parts = if parts.is_empty() {
            "none yet".to_string()
        } else {
            parts.join(", ")
        };
        println!("jobs: {parts}");
    }
    println!(
        "today: {} segments, {} encoded pixels, {} wei estimated",
        s("/pixels_today/segments"),
        s("/pixels_today/encoded_pixels"),
        s("/pixels_today/earnings_wei").as_str().unwrap_or("0")
    );
    let devices = s("/devices");
    match devices.as_array() {
        Some(d) if !d.is_empty() => {
            for g in d {
                println!(
                    "gpu {}: {} util {:.0}% enc {:.0}% dec {:.0}% {} W {} °C {} sessions ({})",
                    g["index"],
                    g["name"].as_str().unwrap_or(""),
                    g["utilization"].as_f64().unwrap_or(0.0) * 100.0,
                    g["encoder_utilization"].as_f64().unwrap_or(0.0) * 100.0,
                    g["decoder_utilization"].as_f64().unwrap_or(0.0) * 100.0,
                    g["power_watts"],
                    g["temperature_celsius"],
                    g["encoder_sessions"],
                    g["source"].as_str().unwrap_or("telemetry")
                );
            }
        }
        _ => println!(
            "devices: none reported (scheduler: {})",
            s("/scheduler").as_str().unwrap_or("?")
        ),
    }
    if let Some(sealing) = v.pointer("/sealing").and_then(|x| x.as_object()) {
        if !sealing.is_empty() {
            let parts: Vec<String> = sealing.iter().map(|(k, n)| format!("{k} {n}")).collect();
            println!("sealing: {}", parts.join(", "));
        }
    }
    println!("store: {}", s("/store"));
    if let Some(lp) = v.pointer("/livepeer").filter(|l| !l.is_null()) {
        let g = |p: &str| lp.pointer(p).cloned().unwrap_or(serde_json::Value::Null);
        println!(
            "livepeer: {} {} (capacity {} [{}]); segments {} accounted, {} failed; {} encoded pixels{}",
            g("/orch_addr").as_str().unwrap_or("?"),
            g("/link/state").as_str().unwrap_or("?"),
            g("/capacity"),
            g("/capacity_mode").as_str().unwrap_or("?"),
            g("/segments/accounted"),
            g("/segments/failed"),
            g("/segments/encoded_pixels"),
            g("/link/last_fault")
                .as_str()
                .map(|f| format!("; last fault: {f}"))
                .unwrap_or_default(),
        );
    }
}
