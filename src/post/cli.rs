//! `comine post status [--json] [--watch]`: the WindowPoSt schedule and comine's plan for it,
//! as a table in the manner of `lotus-miner proving deadlines`.
//!
//! With a daemon running it shows the daemon's view (`/v1/status` → `post`: the plan the
//! scheduler follows, with the running proofs it sees). Without one, or with `--direct`, it
//! reads the full node itself with the `[post]` settings (`FULLNODE_API_INFO`, `[post] miner` …).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::post::{self, table, Report, SystemClock, WallClock};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Deadlines, their opening times, partitions, sectors, proofs and comine's step-down plan.
    Status(StatusArgs),
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print again every --interval seconds until interrupted.
    #[arg(long)]
    pub watch: bool,
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub interval: f64,
    /// Read the full node directly even when a daemon runs.
    #[arg(long)]
    pub direct: bool,
    /// Daemon URL; default: the address in `<data>/api.addr`.
    #[arg(long)]
    pub url: Option<String>,
    #[command(flatten)]
    pub dirs: crate::config::DataDirArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Status(a) => status(a),
    }
}

fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    if !(0.5..=3600.0).contains(&args.interval) {
        anyhow::bail!("--interval must be between 0.5 and 3600 seconds");
    }
    let (config, data_dir) = args.dirs.load_for_client()?;
    let daemon = !args.direct
        && (args.url.is_some() || crate::daemon::client::api_addr_file(&data_dir).exists());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let source = if daemon {
        Source::Daemon
    } else {
        if config.post.fullnode().is_none() {
            anyhow::bail!("no full node to read the schedule from: set FULLNODE_API_INFO (`lotus auth api-info --perm read`) or [post] fullnode_api_info, or start `comine run` with them");
        }
        let cancel = CancellationToken::new();
        let clock: Arc<dyn WallClock> = Arc::new(SystemClock);
        let handle =
            rt.block_on(async { post::start(&config.post, None, clock.clone(), cancel.clone()) })?;
        Source::Direct {
            handle,
            clock,
            cancel,
        }
    };
    let result = rt.block_on(async {
        let mut first = true;
        loop {
            let report = match &source {
                Source::Daemon => daemon_report(&data_dir, &config, args.url.as_deref()).await?,
                Source::Direct { handle, clock, .. } => {
                    if first {
                        first_poll(handle).await?;
                    }
                    let st = handle.status();
                    Report::new(&st, post::evaluate(&st, clock.now_ms(), None))
                }
            };
            first = false;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                if args.watch && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", table::render(&report));
            }
            if !args.watch {
                return anyhow::Ok(());
            }
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs_f64(args.interval)) => {}
            }
        }
    });
    if let Source::Direct { handle, cancel, .. } = source {
        cancel.cancel();
        rt.block_on(handle.join());
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

enum Source {
    Daemon,
    Direct {
        handle: post::PostHandle,
        clock: Arc<dyn WallClock>,
        cancel: CancellationToken,
    },
}

async fn daemon_report(
    data_dir: &std::path::Path,
    config: &Config,
    url: Option<&str>,
) -> anyhow::Result<Report> {
    let text = crate::daemon::client::fetch_text(data_dir, config, url, "/v1/status").await?;
    let v: serde_json::Value = serde_json::from_str(&text).context("status is not JSON")?;
    let post = v.get("post").cloned().unwrap_or(serde_json::Value::Null);
    if post.is_null() {
        anyhow::bail!("the daemon reports no WindowPoSt schedule (an older comine?); use --direct to read the full node");
    }
    serde_json::from_value(post).context("the daemon's post status is not understood")
}

/// Waits for the first complete read (schedule and live map) or the first error; a node that
/// refuses the token or does not answer is an error here, naming the setting.
async fn first_poll(h: &post::PostHandle) -> anyhow::Result<()> {
    let mut rx = h.subscribe();
    let wait = async {
        loop {
            {
                let s = rx.borrow_and_update();
                if s.schedule.as_ref().is_some_and(|s| s.has_live_map()) && s.reachable {
                    return Ok(());
                }
                if let Some(e) = &s.last_error {
                    return Err(anyhow::anyhow!("{e}"));
                }
            }
            if rx.changed().await.is_err() {
                return Err(anyhow::anyhow!("the schedule poller stopped"));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), wait)
        .await
        .context("the full node did not answer within 120 s")?
}
