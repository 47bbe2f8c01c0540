//! `comine report compare A.json B.json … [--out DIR]`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::{compare, schema, write_file};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: ReportCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum ReportCommand {
    /// Put several report.json files side by side (a table and charts).
    Compare {
        /// report.json files (or directories holding one).
        #[arg(required = true, num_args = 1..)]
        reports: Vec<PathBuf>,
        /// Write compare.md and compare.html here (default: only print the table).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        ReportCommand::Compare { reports, out } => {
            let mut loaded = Vec::new();
            for p in reports {
                let file = if p.is_dir() {
                    p.join("report.json")
                } else {
                    p.clone()
                };
                let r = schema::load(&file)?;
                loaded.push((file.display().to_string(), r));
            }
            let md = compare::markdown(&loaded);
            if let Some(dir) = out {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                write_file(&dir.join("compare.md"), md.as_bytes())?;
                write_file(&dir.join("compare.html"), compare::html(&loaded).as_bytes())?;
                tracing::info!("wrote {}", dir.join("compare.html").display());
            }
            crate::util::out!("{md}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
