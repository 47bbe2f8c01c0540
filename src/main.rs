//! The `comine` binary: clap subcommands over the library.
//!
//! Every subcommand returns `anyhow::Result`; `main` prints the error chain on one
//! line (`error: what failed: why`) and exits non-zero, so scripts and operators
//! get one clear line and never a panic trace for bad input. A configuration error exits
//! with 78 (`EX_CONFIG`), which the systemd unit does not restart.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use comine::logging::{self, LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "comine",
    version,
    about = "Co-mining appliance: video transcoding on Filecoin miners' spare GPU capacity"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// More log detail (-v: debug, -vv: trace). `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Transcode one segment (or any file FFmpeg demuxes) into a rendition ladder.
    Transcode(comine::transcode::cli::Args),
    /// GPU telemetry (NVML, host CPU fallback, or simulated devices).
    Gpu(comine::gpu::cli::Args),
    /// Content-addressed storage: IPFS-identical CIDs, Kubo push, CAR, piece CID, deals.
    Store(Box<comine::store::cli::Args>),
    /// Run the daemon: HTTP API, queue, workers, ledger and metrics.
    Run(comine::daemon::cli::RunArgs),
    /// Measure each device's transcoding rate again (cached for `comine run` and
    /// `--capacity auto`, which otherwise measure only when the hardware or FFmpeg changed).
    Calibrate(comine::daemon::cli::CalibrateArgs),
    /// Human summary of a running daemon (read from its API).
    Status(comine::daemon::cli::StatusArgs),
    /// The pixel and earnings ledger.
    Ledger(comine::ledger::cli::Args),
    /// What the work earned, what the pool credited, what reached the wallet; signed receipts.
    Earnings(comine::earnings::cli::Args),
    /// Attach to a Livepeer orchestrator as a remote transcoder on its own, with a fixed
    /// capacity (`comine run --orch-addr …` does the same under the scheduler, with a ledger).
    Livepeer(comine::daemon::livepeer::standalone::Args),
    /// The WindowPoSt schedule from the full node and comine's step-down plan for it.
    Post(comine::post::cli::Args),
    /// Co-mining benchmark: sealing throughput and power lost to transcoding, streams gained.
    Bench(comine::bench::cli::Args),
    /// Work with benchmark reports (compare several machines).
    Report(comine::report::cli::Args),
    /// AI jobs without a daemon: `comine ai upscale INPUT --out DIR` (video segments).
    Ai(comine::ai::cli::Args),
}

/// `[earnings]`, the data directory and `[livepeer] eth_address` from the daemon's config.
fn earnings_context(
    config: Option<&std::path::Path>,
    data_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<comine::earnings::cli::Context> {
    let cfg = comine::config::Config::load(config)?;
    let livepeer_eth = match cfg.livepeer.eth_address.as_deref() {
        Some(a) => Some(comine::earnings::config::parse_address(
            "livepeer.eth_address",
            a,
        )?),
        None => None,
    };
    Ok(comine::earnings::cli::Context {
        data_dir: comine::config::resolve_data_dir(data_dir, &cfg),
        earnings: cfg.earnings,
        livepeer_eth,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    logging::init(cli.log_format, level);
    let result = match cli.command {
        Command::Transcode(args) => comine::transcode::cli::run(args),
        Command::Gpu(args) => comine::gpu::cli::run(args),
        Command::Store(args) => comine::store::cli::run(*args),
        Command::Run(args) => comine::daemon::cli::run(args),
        Command::Status(args) => comine::daemon::cli::status(args),
        Command::Calibrate(args) => comine::daemon::cli::calibrate(args),
        Command::Ledger(args) => comine::ledger::cli::run(args),
        Command::Earnings(args) => comine::earnings::cli::run(args, earnings_context),
        Command::Livepeer(args) => comine::daemon::livepeer::standalone::run(args),
        Command::Post(args) => comine::post::cli::run(args),
        Command::Bench(args) => comine::bench::cli::run(args),
        Command::Report(args) => comine::report::cli::run(args),
        Command::Ai(args) => comine::ai::cli::run(args),
    };
    match result {
        Ok(code) => code,
        // `comine ledger export | head`: the reader has what it wanted (as ripgrep does).
        Err(err) if comine::util::stdout::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` joins the context chain on one line.
            eprintln!("error: {err:#}");
            comine::daemon::cli::exit_status(&err)
        }
    }
}
