//! `comine earnings …`: statements, reconciliation, receipts and their offline check.
//!
//! ```text
//! comine earnings [--since DATE] [--by day|round|job] [--format table|csv|json]
//! comine earnings reconcile [--since DATE] [--by day|round] [--format table|csv|json]
//! comine earnings receipts --day DATE [--out FILE]
//! comine earnings verify FILE
//! comine earnings pool import FILE | pool poll
//! comine earnings chain sync [--max-blocks N]
//! comine earnings key new --out FILE | key show
//! ```
//! The tables are SQLite in WAL mode, so these read (and `pool import` writes) while the
//! daemon runs. The caller (the binary) resolves the config file and data directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use alloy::primitives::Address;
use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::statement::{By, Format};
use super::{receipts, Config, Earnings};
use crate::ledger::time;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub statement: StatementArgs,
    /// Daemon config file (for `[earnings]` and the data directory).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[arg(long, global = true, env = crate::paths::DATA_DIR_ENV)]
    pub data_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct StatementArgs {
    /// First day (UTC) included: YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ.
    #[arg(long, default_value = "1970-01-01")]
    pub since: String,
    /// One row per day, Livepeer round, or job.
    #[arg(long, value_enum, default_value_t = By::Day)]
    pub by: By,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Expected, credited and paid per period, with every difference explained or flagged.
    Reconcile(StatementArgs),
    /// Export a day's signed receipts with Merkle proofs to its signed root.
    Receipts(ReceiptsArgs),
    /// Verify an exported receipts file offline (signatures, CID hashes, proofs, root).
    Verify(VerifyArgs),
    /// The pool's statement: import a CSV, or poll the configured API once.
    Pool {
        #[command(subcommand)]
        command: PoolCommand,
    },
    /// On-chain checks: one pass now (scan, payout checks, balance snapshot).
    Chain {
        #[command(subcommand)]
        command: ChainCommand,
    },
    /// The operator key that signs receipts.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(clap::Args, Debug)]
pub struct ReceiptsArgs {
    /// The UTC day: YYYY-MM-DD.
    #[arg(long)]
    pub day: String,
    /// Write here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// A file written by `comine earnings receipts`.
    pub file: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(clap::Subcommand, Debug)]
pub enum PoolCommand {
    /// Import a CSV statement: kind,timestamp,pixels,amount_wei,tx_hash (kind = job|payout).
    Import { file: PathBuf },
    /// Poll the [earnings.pool] API once.
    Poll,
}

#[derive(clap::Subcommand, Debug)]
pub enum ChainCommand {
    /// Scan / check once and report.
    Sync {
        /// Scan at most this many blocks (orchestrator mode).
        #[arg(long)]
        max_blocks: Option<u64>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum KeyCommand {
    /// Create a new random key file (mode 0600); refuses to overwrite.
    New {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the configured key's address.
    Show,
}

/// What the binary resolves from the config file for this command.
#[derive(Clone, Debug)]
pub struct Context {
    pub earnings: Config,
    pub data_dir: PathBuf,
    /// `[livepeer] eth_address`: the payout address when `[earnings]` names none.
    pub livepeer_eth: Option<Address>,
}

fn parse_since(s: &str) -> anyhow::Result<u64> {
    time::parse_date(s).with_context(|| {
        format!("--since {s:?} is not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ")
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn open(ctx: &Context) -> anyhow::Result<Earnings> {
    Earnings::open(&ctx.earnings, &ctx.data_dir, ctx.livepeer_eth)
        .with_context(|| format!("opening the earnings tables in {}", ctx.data_dir.display()))
}

fn write_out(out: Option<&Path>, text: &str) -> anyhow::Result<()> {
    match out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// Runs `comine earnings`; `load` reads the config file and data directory.
pub fn run(
    args: Args,
    load: impl FnOnce(Option<&Path>, Option<PathBuf>) -> anyhow::Result<Context>,
) -> anyhow::Result<ExitCode> {
    // Commands that need no config first.
    match &args.command {
        Some(Command::Verify(v)) => return verify(v),
        Some(Command::Key {
            command: KeyCommand::New { out },
        }) => {
            let k = receipts::OperatorKey::generate(out)?;
            println!("{}", k.address());
            eprintln!(
                "wrote a new key to {} (mode 0600); set [earnings] key_file = {:?}",
                out.display(),
                out.display().to_string()
            );
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let ctx = load(args.config.as_deref(), args.data_dir.clone())?;
    match args.command {
        None => {
            let since = parse_since(&args.statement.since)?;
            let e = open(&ctx)?;
            let s = e.statement(since, args.statement.by)?;
            write_out(None, &super::statement::render(&s, args.statement.format))?;
        }
        Some(Command::Reconcile(a)) => {
            if a.by == By::Job {
                anyhow::bail!("--by job is for `comine earnings`; reconcile per day or round (pools pay per period)");
            }
            let since = parse_since(&a.since)?;
            let e = open(&ctx)?;
            let r = runtime()?.block_on(e.reconcile(since, a.by, time::now_ms()))?;
            write_out(None, &super::reconcile::render(&r, a.format))?;
        }
        Some(Command::Receipts(a)) => {
            let day_ms = time::parse_date(&a.day)
                .filter(|_| a.day.len() == 10)
                .with_context(|| format!("--day {:?} is not a day; use YYYY-MM-DD", a.day))?;
            let e = open(&ctx)?;
            let ex = e.export_day(&time::day_of(day_ms))?;
            let n = ex.receipts.len();
            write_out(
                a.out.as_deref(),
                &(serde_json::to_string_pretty(&ex)? + "\n"),
            )?;
            eprintln!("{n} receipts for {}, root {}", ex.day, ex.root);
        }
        Some(Command::Pool { command }) => {
            let e = open(&ctx)?;
            match command {
                PoolCommand::Import { file } => {
                    let (jobs, payouts) = super::pool::import_csv(e.records(), &file)?;
                    println!(
                        "imported {jobs} new job lines and {payouts} new payouts from {}",
                        file.display()
                    );
                }
                PoolCommand::Poll => {
                    let p = &ctx.earnings.pool;
                    if !matches!(p.kind.as_str(), "livepool" | "openpool") {
                        anyhow::bail!("[earnings.pool] kind is {:?}: nothing to poll (use livepool or openpool, or `comine earnings pool import FILE`)", p.kind);
                    }
                    let me = e
                        .payout_address()
                        .ok_or(super::EarningsError::NoPayoutAddress)?;
                    let client = super::pool::PoolClient::new(
                        &p.kind,
                        &p.url,
                        &p.payouts_url,
                        me,
                        e.model().commission,
                        std::time::Duration::from_secs(p.timeout_secs.max(1)),
                    )?;
                    let r = runtime()?.block_on(client.poll(e.records()))?;
                    println!("{}", serde_json::to_string(&r)?);
                }
            }
        }
        Some(Command::Chain {
            command: ChainCommand::Sync { max_blocks },
        }) => {
            let e = open(&ctx)?;
            let rt = runtime()?;
            let tick = rt.block_on(async {
                let chain = e.connect_chain().await?.ok_or_else(|| {
                    anyhow::anyhow!("[earnings.chain] rpc_url is not set: no chain to check")
                })?;
                Ok::<_, anyhow::Error>(
                    e.chain_tick(&chain, max_blocks, &CancellationToken::new())
                        .await?,
                )
            })?;
            println!("{}", serde_json::to_string_pretty(&tick)?);
        }
        Some(Command::Key {
            command: KeyCommand::Show,
        }) => {
            let e = open(&ctx)?;
            match e.key_address() {
                Some(a) => println!("{a}"),
                None => anyhow::bail!(super::EarningsError::NoKey),
            }
        }
        Some(Command::Verify(_))
        | Some(Command::Key {
            command: KeyCommand::New { .. },
        }) => {}
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(v: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&v.file)
        .with_context(|| format!("reading {}", v.file.display()))?;
    let rep = receipts::verify_export(&text)
        .with_context(|| format!("{} is not a receipts export", v.file.display()))?;
    match v.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rep)?),
        _ => {
            println!(
                "day {}: {}/{} receipts valid, root {}, signer {}",
                rep.day,
                rep.valid,
                rep.receipts,
                if rep.root_valid { "valid" } else { "INVALID" },
                rep.signer.map(|a| a.to_string()).unwrap_or_default()
            );
            println!(
                "pixels: {} decoded, {} encoded (valid receipts)",
                rep.decoded_pixels, rep.encoded_pixels
            );
            for f in &rep.failures {
                println!("FAIL {f}");
            }
        }
    }
    Ok(if rep.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
