//! `comine store ...`: add, cat, car, commp, the Kubo push queue and deal batches.
// Doc comments on the flags below are clap's `--help` text, written for a terminal
// (`<DIR>`, `[:gop=2s|intra]`), not rustdoc markup.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args as ClapArgs, Subcommand, ValueEnum};
use futures_util::StreamExt;
use serde_json::json;

use super::deals::{self, BatchState, DealConfig};
use super::gc::GcOptions;
use super::kubo::{KuboClient, KuboError};
use super::queue::{self, PushError};
use super::{commp, parse_cid, AddOptions, PinKind, Store};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The config file and data directory (the store lives in <DIR>/store).
    #[command(flatten)]
    pub dirs: crate::config::DataDirArgs,
    /// Kubo RPC API address (URL or multiaddr), used with `--backend kubo`, `push` and `node`.
    #[arg(
        long,
        global = true,
        env = "COMINE_IPFS_API",
        default_value = "http://127.0.0.1:5001"
    )]
    pub api: String,
    /// Seconds to wait for the IPFS node on reads (sent as Kubo's `timeout` option too).
    #[arg(long, global = true, default_value_t = 30)]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: Cmd,
}

/// The store backends, named as `[store] backend` in the config names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// The embedded blockstore in <DATA_DIR>/store (`local` is accepted too).
    #[value(alias = "local")]
    Embedded,
    /// The Kubo node at --api.
    Kubo,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Import a file as a UnixFS DAG (Kubo-identical CIDs), store and pin it.
    Add {
        file: PathBuf,
        /// CID version: 0 (default, like Kubo) or 1 (implies raw leaves, like Kubo).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
        cid_version: u8,
        /// Raw leaves (default: on with --cid-version 1, off with 0). `--raw-leaves=false` forces off.
        #[arg(long, num_args = 0..=1, default_missing_value = "true")]
        raw_leaves: Option<bool>,
        /// embedded: store and pin in the embedded blockstore only; kubo: the same, then
        /// push to the Kubo node (queued while it is unreachable).
        #[arg(long, value_enum, default_value_t = Backend::Embedded)]
        backend: Backend,
        /// Only compute the CID: store nothing, push nothing (Kubo's `--only-hash`).
        #[arg(short = 'n', long)]
        only_hash: bool,
        #[arg(long)]
        json: bool,
    },
    /// Stream a stored file to stdout (every block verified).
    Cat {
        cid: String,
        /// Where to read from: embedded (the embedded blockstore, every block verified) or
        /// kubo (the Kubo node's `cat`, for content comine never stored itself).
        #[arg(long, value_enum, default_value_t = Backend::Embedded)]
        backend: Backend,
    },
    /// Write a CAR v1 of the whole DAG.
    Car {
        cid: String,
        /// Output file (`-` for stdout). Written to FILE.partial, then renamed.
        #[arg(long)]
        out: PathBuf,
    },
    /// Piece CID (CommP) of a file, as a Filecoin deal would see it.
    Commp {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Pinned roots in the embedded store, with their kind (keep, or retain: a rendition kept
    /// for `[store] retain_days`).
    Pins {
        #[arg(long)]
        json: bool,
    },
    /// Pin a root whose blocks are all in the store (a keep pin: never collected).
    Pin { cid: String },
    /// Remove a pin; garbage collection then frees the blocks nothing else needs.
    Unpin { cid: String },
    /// Free the blocks no live rendition needs (see docs/storage.md, "Garbage collection").
    Gc {
        /// Report what would be freed; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Retention window for renditions, in days (default: `[store] retain_days` of the
        /// config, else 30).
        #[arg(long)]
        retain_days: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Renditions waiting for the Kubo node.
    Queue {
        #[arg(long)]
        json: bool,
    },
    /// Push every queued rendition to the Kubo node now.
    Push {
        #[arg(long)]
        json: bool,
    },
    /// Where one rendition stands: local pin, push queue, and each IPFS peer's pin state
    /// (the Kubo node today; exits 1 unless it is pinned everywhere it should be).
    Status {
        cid: String,
        #[arg(long)]
        json: bool,
    },
    /// The Kubo node's id and version.
    Node {
        #[arg(long)]
        json: bool,
    },
    /// Serve pinned content as an IPFS trustless gateway (raw blocks and CARs) until Ctrl-C.
    /// `comine run` serves the same gateway itself when `[gateway] listen` is set.
    Gateway {
        /// Address to listen on (unauthenticated: keep it on loopback or behind a proxy
        /// unless the content is meant to be public).
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
        /// Sustained requests per second per client IP (IPv6: per /64); 0 = unlimited.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Requests a client may make at once before the rate applies.
        #[arg(long, default_value_t = 40)]
        burst: u32,
        /// CAR downloads served at the same time.
        #[arg(long, default_value_t = 16)]
        max_streams: usize,
    },
    /// Filecoin deal batches (Boost offline deals).
    #[command(subcommand)]
    Deal(DealCmd),
}

#[derive(ClapArgs, Debug, Clone)]
pub struct DealOpts {
    /// Storage provider actor (f0…); a placeholder is printed when unset.
    #[arg(long, env = "COMINE_DEAL_PROVIDER")]
    pub provider: Option<String>,
    /// Client wallet for `boost offline-deal --wallet`.
    #[arg(long, env = "COMINE_DEAL_WALLET")]
    pub wallet: Option<String>,
    /// Deal duration in epochs.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Storage price (attoFIL per epoch per GiB).
    #[arg(long)]
    pub storage_price: Option<String>,
    /// Verified (DataCap) deal.
    #[arg(long)]
    pub verified: bool,
    /// Path of the `boost` binary (default: `boost` on PATH).
    #[arg(long, env = "COMINE_BOOST_BIN")]
    pub boost_bin: Option<String>,
    /// Path of `boostd`; when set, `deal run` also imports the CAR on this machine.
    #[arg(long, env = "COMINE_BOOSTD_BIN")]
    pub boostd_bin: Option<String>,
}

impl From<&DealOpts> for DealConfig {
    fn from(o: &DealOpts) -> Self {
        DealConfig {
            provider: o.provider.clone(),
            wallet: o.wallet.clone(),
            duration: o.duration,
            storage_price: o.storage_price.clone(),
            verified: o.verified,
            boost_bin: o.boost_bin.clone(),
            boostd_bin: o.boostd_bin.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum DealCmd {
    /// Pack stored renditions not yet in a batch into CAR files with piece CIDs.
    Pack {
        /// Largest CAR per batch, in bytes.
        #[arg(long, default_value_t = deals::DEFAULT_MAX_SIZE)]
        max_size: u64,
        #[arg(long)]
        json: bool,
    },
    /// Batches and their states.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Manifest and exact `boost offline-deal` / `boostd import-data` commands for a batch.
    Commands {
        batch: String,
        #[command(flatten)]
        opts: DealOpts,
        #[arg(long)]
        json: bool,
    },
    /// Run the Boost commands for a ready batch (needs --provider).
    Run {
        batch: String,
        #[command(flatten)]
        opts: DealOpts,
        #[arg(long)]
        json: bool,
    },
    /// Record a state change made outside comine (e.g. `active` once the sector is proven).
    Mark {
        batch: String,
        #[arg(value_enum)]
        state: BatchState,
        #[arg(long)]
        deal_uuid: Option<String>,
        #[arg(long)]
        error: Option<String>,
    },
}

fn open_store(args: &Args) -> anyhow::Result<Store> {
    let (_, dir) = args.dirs.load()?;
    Store::open(&dir).with_context(|| format!("opening the store in {}", dir.display()))
}

fn client(args: &Args) -> anyhow::Result<KuboClient> {
    Ok(KuboClient::new(
        &args.api,
        Duration::from_secs(args.timeout.max(1)),
    )?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match &args.command {
        Cmd::Add {
            file,
            cid_version,
            raw_leaves,
            backend,
            only_hash,
            json,
        } => {
            let opts = AddOptions {
                cid_version: *cid_version,
                raw_leaves: *raw_leaves,
            };
            if *only_hash {
                return only_hash_add(file, &opts, *json);
            }
            add(&args, file, &opts, *backend, *json)
        }
        Cmd::Cat { cid, backend } => cat(&args, cid, *backend),
        Cmd::Car { cid, out } => car(&args, cid, out),
        Cmd::Commp { file, json } => {
            let f = std::fs::File::open(file)
                .with_context(|| format!("opening {} (check the path)", file.display()))?;
            let (piece, padded, payload) =
                commp::piece_cid(io::BufReader::with_capacity(1 << 20, f))
                    .with_context(|| format!("reading {}", file.display()))?;
            if *json {
                print_json(
                    &json!({"piece_cid": piece.to_string(), "padded_size": padded, "payload_size": payload}),
                )?;
            } else {
                crate::util::outln!("{piece} padded_size={padded} payload_size={payload}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Pins { json } => {
            let store = open_store(&args)?;
            let pins = store.pins_with_kind()?;
            if *json {
                let v: Vec<_> = pins
                    .iter()
                    .map(|(c, k, i)| json!({"cid": c.to_string(), "kind": k, "info": i}))
                    .collect();
                print_json(&v)?;
            } else {
                for (cid, kind, info) in pins {
                    let kind = if kind == PinKind::Keep {
                        "keep"
                    } else {
                        "retain"
                    };
                    crate::util::outln!(
                        "{cid} {kind} {} {}",
                        info.size,
                        info.name.unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Pin { cid } => {
            let cid = parse_cid(cid)?;
            let info = open_store(&args)?
                .pin(&cid)
                .with_context(|| format!("pinning {cid}"))?;
            crate::util::outln!("pinned {cid} ({} bytes)", info.size);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Unpin { cid } => {
            let cid = parse_cid(cid)?;
            if open_store(&args)?.unpin(&cid)? {
                crate::util::outln!("unpinned {cid}; `comine store gc` frees its blocks");
                Ok(ExitCode::SUCCESS)
            } else {
                anyhow::bail!("{cid} is not pinned (see `comine store pins`)")
            }
        }
        Cmd::Gc {
            dry_run,
            retain_days,
            json,
        } => {
            let days = match retain_days {
                Some(d) => *d,
                None => args.dirs.load()?.0.store.retain_days,
            };
            let store = open_store(&args)?;
            let report = store.gc(GcOptions::new(days, *dry_run))?;
            if *json {
                print_json(&report)?;
            } else {
                crate::util::outln!(
                    "{} {} bytes: {} blocks ({} bytes), {} orphan files ({} bytes), {} deal CARs ({} bytes); {} retention pins ended, {} roots dropped, {} live; {} ms",
                    if report.dry_run { "would free" } else { "freed" },
                    report.bytes_freed,
                    report.blocks_freed,
                    report.block_bytes_freed,
                    report.orphan_files,
                    report.orphan_bytes,
                    report.car_files,
                    report.car_bytes,
                    report.unpinned,
                    report.roots_dropped,
                    report.live_roots,
                    report.millis
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Queue { json } => {
            let store = open_store(&args)?;
            let queued = store.queued()?;
            if *json {
                let v: Vec<_> = queued
                    .iter()
                    .map(|(c, e)| json!({"cid": c.to_string(), "entry": e}))
                    .collect();
                print_json(&v)?;
            } else {
                for (cid, e) in queued {
                    crate::util::outln!(
                        "{cid} attempts={} last_error={}",
                        e.attempts,
                        e.last_error.unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Push { json } => {
            let store = open_store(&args)?;
            let client = client(&args)?;
            let report = runtime()?.block_on(queue::push_pending(&store, &client, true))?;
            if *json {
                print_json(&report)?;
            } else {
                crate::util::outln!(
                    "pushed {} failed {} remaining {}",
                    report.pushed.len(),
                    report.failed.len(),
                    report.remaining
                );
            }
            Ok(if report.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Status { cid, json } => status(&args, cid, *json),
        Cmd::Node { json } => {
            let client = client(&args)?;
            let (id, version) = runtime()?.block_on(async {
                Ok::<_, KuboError>((client.id().await?, client.version().await?))
            })?;
            if *json {
                print_json(&json!({"id": id, "version": version, "api": client.base_url()}))?;
            } else {
                crate::util::outln!("{} {} {}", id.id, version, id.agent_version);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Gateway {
            listen,
            rate,
            burst,
            max_streams,
        } => {
            let store = open_store(&args)?;
            let cfg = super::gateway::GatewayConfig {
                rate_per_sec: *rate,
                burst: *burst,
                max_streams: *max_streams,
                ..Default::default()
            };
            runtime()?.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen.as_str())
                    .await
                    .with_context(|| format!("listening on {listen} (is the address free?)"))?;
                let addr = listener.local_addr()?;
                // The address on stdout (machine-readable: tests and scripts read it).
                println!("gateway listening on http://{addr}");
                io::stdout().flush().ok();
                tracing::info!(%addr, "trustless gateway up");
                let stop = tokio_util::sync::CancellationToken::new();
                let on_signal = stop.clone();
                tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    on_signal.cancel();
                });
                #[cfg(unix)]
                {
                    let on_term = stop.clone();
                    if let Ok(mut term) =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        tokio::spawn(async move {
                            term.recv().await;
                            on_term.cancel();
                        });
                    }
                }
                super::gateway::serve(listener, store, &cfg, stop)
                    .await
                    .context("serving the gateway")
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Deal(cmd) => deal(&args, cmd),
    }
}

fn add(
    args: &Args,
    file: &Path,
    opts: &AddOptions,
    backend: Backend,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = open_store(args)?;
    if backend == Backend::Embedded {
        let added = store
            .add_file(file, opts)
            .with_context(|| format!("adding {}", file.display()))?;
        return print_added(file, opts, &added, backend, (false, false, None), json);
    }
    let client = client(args)?;
    let rt = runtime()?;
    // The node imports the source file while the local import hashes and stores it: the two
    // run side by side instead of one after the other, and the node's CID is checked against
    // ours once both are done. The local copy and the queue entry come first in durability:
    // a failed or interrupted upload leaves the rendition queued for `comine store push`.
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let deadline = client.timeout() + Duration::from_secs(size / queue::MIN_UPLOAD_RATE);
    let upload = {
        let f = std::fs::File::open(file)
            .with_context(|| format!("opening {} (check the path)", file.display()))?;
        let (client, opts) = (client.clone(), *opts);
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        rt.spawn(async move {
            let reader = Box::new(io::BufReader::with_capacity(super::CHUNK_SIZE, f));
            tokio::time::timeout(deadline, client.add(reader, &name, &opts)).await
        })
    };
    let added = match store.add_file(file, opts) {
        Ok(a) => a,
        Err(e) => {
            upload.abort();
            return Err(e).with_context(|| format!("adding {}", file.display()));
        }
    };
    store.enqueue_push(&added.cid, opts)?;
    let outcome: Result<(), PushError> = rt.block_on(async {
        let remote = match upload.await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => {
                return Err(PushError::Node(KuboError::Timeout {
                    url: client.base_url().to_string(),
                    endpoint: "add".into(),
                    timeout: deadline,
                }))
            }
            Err(e) => {
                return Err(PushError::Node(KuboError::Source(format!(
                    "upload task failed: {e}"
                ))))
            }
        };
        if !super::kubo::same_cid(&remote.cid, &added.cid) {
            return Err(PushError::Node(KuboError::CidMismatch {
                local: added.cid.to_string(),
                remote: remote.cid.to_string(),
            }));
        }
        if !client.pin_ls(&added.cid).await? {
            client.pin_add(&added.cid).await?;
        }
        Ok(())
    });
    let state = match outcome {
        Ok(()) => {
            store.dequeue_push(&added.cid)?;
            (true, false, None)
        }
        Err(PushError::Node(e @ KuboError::CidMismatch { .. })) => {
            store.record_push_failure(&added.cid, &e.to_string())?;
            return Err(e).context(format!(
                "pushing {} to {}",
                file.display(),
                client.base_url()
            ));
        }
        Err(e) => {
            tracing::warn!(cid = %added.cid, error = %e, "IPFS node not reachable; stored locally and queued for `comine store push`");
            store.record_push_failure(&added.cid, &e.to_string())?;
            (false, true, Some(e.to_string()))
        }
    };
    print_added(file, opts, &added, backend, state, json)
}

/// Prints `store add`'s answer; `state` is (pushed, queued, push_error).
fn print_added(
    file: &Path,
    opts: &AddOptions,
    added: &super::AddResult,
    backend: Backend,
    (pushed, queued, push_error): (bool, bool, Option<String>),
    json: bool,
) -> anyhow::Result<ExitCode> {
    if json {
        print_json(&json!({
            "cid": added.cid.to_string(),
            "size": added.size,
            "dag_size": added.dag_size,
            "blocks": added.blocks,
            "cid_version": opts.cid_version,
            "raw_leaves": opts.raw_leaves(),
            "backend": if backend == Backend::Kubo { "kubo" } else { "embedded" },
            "pushed": pushed,
            "queued": queued,
            "push_error": push_error,
        }))?;
    } else {
        crate::util::outln!("added {} {}", added.cid, file.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `add --only-hash`: the CID `add` would give, from the file alone.
fn only_hash_add(file: &Path, opts: &AddOptions, json: bool) -> anyhow::Result<ExitCode> {
    let f = std::fs::File::open(file)
        .with_context(|| format!("opening {} (check the path)", file.display()))?;
    let imported = super::compute_cid(&mut io::BufReader::with_capacity(1 << 20, f), opts)
        .with_context(|| format!("hashing {}", file.display()))?;
    if json {
        print_json(&json!({
            "cid": imported.cid.to_string(),
            "size": imported.size,
            "dag_size": imported.dag_size,
            "blocks": imported.blocks,
            "cid_version": opts.cid_version,
            "raw_leaves": opts.raw_leaves(),
            "only_hash": true,
        }))?;
    } else {
        crate::util::outln!("{} {}", imported.cid, file.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// One peer's pin state as `store status` reports it.
#[derive(Debug, serde::Serialize)]
struct PeerPin {
    /// The peer's id (`null` when it could not be asked).
    peer: Option<String>,
    api: String,
    /// `pinned`, `unpinned`, or `error`.
    status: &'static str,
    error: Option<String>,
}

fn status(args: &Args, cid: &str, json: bool) -> anyhow::Result<ExitCode> {
    let cid = parse_cid(cid)?;
    let store = open_store(args)?;
    let local = store.pin_info(&cid)?;
    let queued = store
        .queued()?
        .into_iter()
        .find(|(c, _)| *c == cid)
        .map(|(_, e)| e);
    let client = client(args)?;
    let peer = runtime()?.block_on(async {
        let peer = client.id().await.map(|id| id.id).ok();
        match client.pin_ls(&cid).await {
            Ok(true) => PeerPin {
                peer,
                api: client.base_url().to_string(),
                status: "pinned",
                error: None,
            },
            Ok(false) => PeerPin {
                peer,
                api: client.base_url().to_string(),
                status: "unpinned",
                error: None,
            },
            Err(e) => PeerPin {
                peer,
                api: client.base_url().to_string(),
                status: "error",
                error: Some(e.to_string()),
            },
        }
    });
    let everywhere = local.is_some() && peer.status == "pinned";
    if json {
        print_json(&json!({
            "cid": cid.to_string(),
            "local": local,
            "queued": queued,
            "peers": [&peer],
        }))?;
    } else {
        match &local {
            Some(info) => crate::util::outln!("local   pinned ({} bytes)", info.size),
            None => crate::util::outln!("local   not pinned"),
        }
        if let Some(q) = &queued {
            crate::util::outln!(
                "queue   waiting (attempts={} last_error={})",
                q.attempts,
                q.last_error.clone().unwrap_or_default()
            );
        }
        crate::util::outln!(
            "peer    {} {} {}{}",
            peer.peer.as_deref().unwrap_or("?"),
            peer.api,
            peer.status,
            peer.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
    }
    Ok(if everywhere {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn cat(args: &Args, cid: &str, backend: Backend) -> anyhow::Result<ExitCode> {
    let cid = parse_cid(cid)?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let result: anyhow::Result<()> = match backend {
        Backend::Embedded => {
            let store = open_store(args)?;
            let mut reader = store.cat(&cid)?;
            io::copy(&mut reader, &mut out).map(|_| ()).map_err(|e| {
                if e.kind() == io::ErrorKind::BrokenPipe {
                    return anyhow::Error::from(e);
                }
                // Store errors (corrupt, missing block) travel inside the io::Error.
                match e.into_inner() {
                    Some(inner) => anyhow::anyhow!(inner.to_string()),
                    None => anyhow::anyhow!("writing to stdout"),
                }
            })
        }
        Backend::Kubo => {
            let client = client(args)?;
            runtime()?.block_on(async {
                let mut stream = Box::pin(client.cat(&cid).await?);
                while let Some(chunk) = stream.next().await {
                    out.write_all(&chunk?)?;
                }
                Ok(())
            })
        }
    };
    if let Err(e) = result {
        // A closed pipe (`| head`) is not an error.
        if e.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
        {
            return Ok(ExitCode::SUCCESS);
        }
        return Err(e).context(format!("cat {cid}"));
    }
    out.flush().ok();
    Ok(ExitCode::SUCCESS)
}

fn car(args: &Args, cid: &str, out: &Path) -> anyhow::Result<ExitCode> {
    let cid = parse_cid(cid)?;
    let store = open_store(args)?;
    if out == Path::new("-") {
        let stdout = io::stdout();
        let mut w = io::BufWriter::new(stdout.lock());
        store.car_export(&cid, &mut w)?;
        return Ok(ExitCode::SUCCESS);
    }
    // Special files (/dev/full, pipes) are written in place; regular paths via a temp + rename,
    // so a failed export never leaves a half-written CAR under the requested name.
    let special = std::fs::metadata(out)
        .map(|m| !m.is_file())
        .unwrap_or(false);
    let target = if special {
        out.to_path_buf()
    } else {
        partial_path(out)
    };
    let result = (|| -> anyhow::Result<u64> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        let mut w = io::BufWriter::with_capacity(1 << 20, f);
        let n = store.car_export(&cid, &mut w)?;
        let f = w
            .into_inner()
            .map_err(|e| super::StoreError::io("writing the CAR", e.into_error()))?;
        if !special {
            f.sync_all()
                .map_err(|e| super::StoreError::io("writing the CAR", e))?;
        }
        Ok(n)
    })();
    match result {
        Ok(n) => {
            if !special {
                std::fs::rename(&target, out)
                    .with_context(|| format!("renaming to {}", out.display()))?;
            }
            tracing::info!(%cid, bytes = n, out = %out.display(), "CAR written");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if !special {
                let _ = std::fs::remove_file(&target);
            }
            Err(e).context(format!("exporting {cid} to {}", out.display()))
        }
    }
}

fn partial_path(out: &Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".partial");
    out.with_file_name(name)
}

fn deal(args: &Args, cmd: &DealCmd) -> anyhow::Result<ExitCode> {
    let store = open_store(args)?;
    match cmd {
        DealCmd::Pack { max_size, json } => {
            let batches = deals::pack(&store, *max_size)?;
            if *json {
                print_json(&batches)?;
            } else if batches.is_empty() {
                crate::util::outln!(
                    "nothing to pack: every stored rendition is already in a batch"
                );
            } else {
                for b in &batches {
                    crate::util::outln!(
                        "{} {} {} items={} car_size={} padded_size={}",
                        b.id,
                        b.state,
                        b.piece_cid,
                        b.items.len(),
                        b.car_size,
                        b.padded_size
                    );
                }
            }
            let failed = batches.iter().any(|b| b.state == BatchState::Failed);
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        DealCmd::List { json } => {
            let batches = deals::list(&store)?;
            if *json {
                print_json(&batches)?;
            } else {
                for b in &batches {
                    crate::util::outln!(
                        "{} {} {} payload={} items={} {}",
                        b.id,
                        b.state,
                        b.piece_cid,
                        b.payload_cid,
                        b.items.len(),
                        b.error.clone().unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DealCmd::Commands { batch, opts, json } => {
            let b = deals::get(&store, batch)?;
            if b.state == BatchState::Packing || b.state == BatchState::Failed {
                anyhow::bail!("batch {batch} is {}; only a packed batch has deal commands (run `deal pack` again)", b.state);
            }
            let cmds = deals::commands(&b, &DealConfig::from(opts));
            if *json {
                print_json(&cmds)?;
            } else {
                crate::util::outln!(
                    "# manifest\n{}",
                    serde_json::to_string_pretty(&cmds.manifest)?
                );
                crate::util::outln!(
                    "# client: propose the offline deal\n{}",
                    shell_join(&cmds.boost)
                );
                crate::util::outln!(
                    "# provider: after shipping the CAR, import it\n{}",
                    shell_join(&cmds.boostd)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DealCmd::Run { batch, opts, json } => {
            let b = deals::run(&store, batch, &DealConfig::from(opts))?;
            if *json {
                print_json(&b)?;
            } else {
                crate::util::outln!(
                    "{} {} deal_uuid={}",
                    b.id,
                    b.state,
                    b.deal_uuid.unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DealCmd::Mark {
            batch,
            state,
            deal_uuid,
            error,
        } => {
            let b = deals::set_state(&store, batch, *state, deal_uuid.clone(), error.clone())?;
            crate::util::outln!("{} {}", b.id, b.state);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=./:,@".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
