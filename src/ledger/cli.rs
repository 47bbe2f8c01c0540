//! `comine ledger export --since DATE --format csv|json [--out FILE]`
//!
//! Reads the ledger from the data directory's database (a running daemon does not stop
//! that); if the database cannot be opened here, the same statement is fetched from the
//! daemon's API.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::export::{self, Format};
use super::{time, Ledger, Price};
use crate::config::Config;

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
    /// Daemon config (for the data directory and price).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, env = crate::paths::DATA_DIR_ENV)]
    pub data_dir: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let LedgerCommand::Export(args) = args.command;
    let since = time::parse_date(&args.since).with_context(|| {
        format!(
            "--since {:?} is not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ",
            args.since
        )
    })?;
    let config = Config::load(args.config.as_deref())?;
    let data_dir = crate::daemon::resolve_data_dir(args.data_dir.clone(), &config);
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
    let text = match Ledger::open(&ledger_dir, 8 << 20, price) {
        Ok(ledger) => export::render(&export::statement(&ledger, since)?, args.format),
        Err(err) => {
            tracing::info!(%err, "cannot read the ledger here; asking the daemon's API");
            let fmt = match args.format {
                Format::Csv => "csv",
                Format::Json => "json",
            };
            crate::daemon::client::get_text(
                &data_dir,
                &config,
                &format!("/v1/ledger/export?since={}&format={fmt}", since / 1000),
            )
            .with_context(|| format!("ledger in {} cannot be read ({err})", data_dir.display()))?
        }
    };
    match args.out {
        Some(path) => {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
