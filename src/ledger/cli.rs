//! `comine ledger export --since DATE --format csv|json [--out FILE]`
//!
//! While a daemon runs with the data directory the statement is fetched from its API (the log
//! says so); otherwise, or when it does not answer, the ledger is read from the data
//! directory's database directly.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::export::{self, Format};
use super::{time, Ledger, Price};
use crate::config::DataDirArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: LedgerCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum LedgerCommand {
    /// Write a statement of finished jobs (pixels, earnings, CIDs) since a date.
    Export(ExportArgs),
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// First day (UTC) included: YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ.
    #[arg(long, default_value = "1970-01-01")]
    pub since: String,
    #[arg(long, value_enum, default_value_t = Format::Csv)]
    pub format: Format,
    /// Write here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Daemon config (for the data directory and price) and data directory.
    #[command(flatten)]
    pub dirs: DataDirArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let LedgerCommand::Export(args) = args.command;
    let since = time::parse_date(&args.since).with_context(|| {
        format!(
            "--since {:?} is not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ",
            args.since
        )
    })?;
    let (config, data_dir) = args.dirs.load_for_client()?;
    let ledger_dir = data_dir.join("ledger");
    if !ledger_dir.exists() && !data_dir.join(crate::db::FILE).exists() {
        anyhow::bail!(
            "no ledger at {}: has `comine run` ever run with this data directory?",
            ledger_dir.display()
        );
    }
    let price = Price {
        per_unit_wei: config.ledger.price_per_unit_wei,
        pixels_per_unit: config.ledger.pixels_per_unit,
    };
    let fmt = match args.format {
        Format::Csv => "csv",
        Format::Json => "json",
    };
    let path = format!("/v1/ledger/export?since={}&format={fmt}", since / 1000);
    let ask_daemon = || crate::daemon::client::get_text(&data_dir, &config, &path);
    // A running daemon holds the ledger: ask it, and say so (this is the normal case on a
    // service host, not an error).
    let addr_file = crate::daemon::client::api_addr_file(&data_dir);
    let text = if addr_file.exists() {
        tracing::info!(data_dir = %data_dir.display(), "a comine daemon is running with this data directory; asking it for the statement");
        match ask_daemon() {
            Ok(text) => text,
            // A stale api.addr (the daemon was killed): read the ledger directly.
            Err(api_err) => match Ledger::open(&ledger_dir, 8 << 20, price) {
                Ok(ledger) => {
                    tracing::info!(error = %format!("{api_err:#}"), "the daemon did not answer; reading the ledger directly");
                    export::render(&export::statement(&ledger, since)?, args.format)
                }
                Err(_) => {
                    return Err(api_err.context("the daemon holds the ledger but did not answer"))
                }
            },
        }
    } else {
        match Ledger::open(&ledger_dir, 8 << 20, price) {
            Ok(ledger) => export::render(&export::statement(&ledger, since)?, args.format),
            Err(err) => {
                tracing::info!(
                    "the ledger is in use (a daemon is starting or running); asking the daemon"
                );
                ask_daemon().with_context(|| {
                    format!(
                        "the ledger at {} is in use ({err}) and no daemon answered",
                        ledger_dir.display()
                    )
                })?
            }
        }
    };
    match args.out {
        Some(path) => {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => crate::util::out!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
