//! `comine transcode`: placeholder while the engine lands.
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input file, or `-` for stdin.
    pub input: String,
}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("transcode engine not built yet")
}
