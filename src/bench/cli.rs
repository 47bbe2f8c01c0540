//! `comine bench [--suite quick|standard|tiny|PATH.toml] [--out DIR] [--seal builtin|cmd:'…'|observe|none] [--input MEDIA] [--redact]`
//! and `comine bench --print-suite NAME`.
// Doc comments on the flags below are clap's `--help` text, written for a terminal
// (`<DIR>`, `[:gop=2s|intra]`), not rustdoc markup.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::run::{self, RunOptions};
use super::suite::Suite;
use super::workload::SealMode;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// Built-in suite (quick, standard, tiny) or a suite TOML file.
    #[arg(long, default_value = "quick")]
    pub suite: String,
    /// Directory for report.json, report.html and report.md
    /// (default: DATA_DIR/bench/<unix time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Sealing workload: builtin (real sealing on the CPU), cmd:'COMMAND' (run repeatedly),
    /// observe (watch lotus-miner's WorkerJobs via MINER_API_INFO) or none.
    #[arg(long, default_value = "builtin", value_parser = parse_seal)]
    pub seal: SealMode,
    /// Media file, .m3u8 playlist or HLS directory to cut into segments instead of the
    /// generated test pattern.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Without an NVML GPU, simulate this `gpu::sim` preset for the (labelled) GPU
    /// figures: rtx3060, rtx3090, rtx4090, a4000 or a5000.
    #[arg(long, default_value = super::sampler::SimSampler::DEFAULT_PRESET, value_name = "PRESET")]
    pub sim_gpu: String,
    /// The config file and data directory (reports go to DATA_DIR/bench/ without --out).
    #[command(flatten)]
    pub dirs: crate::config::DataDirArgs,
    /// Print report.json on stdout instead of the Markdown summary.
    #[arg(long)]
    pub json: bool,
    /// Print a built-in suite's TOML (quick, standard, tiny) and exit: the starting point of
    /// a suite file, and what a pilot posts with its results. Its hash is the built-in's.
    #[arg(long, value_name = "NAME")]
    pub print_suite: Option<String>,
    /// Leave the host name and hardware serials/UUIDs out of the report files, for posting
    /// them in public.
    #[arg(long)]
    pub redact: bool,
    /// Progress bars: auto (when stderr is a terminal), always or never.
    #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
    pub progress: String,
    #[command(subcommand)]
    pub worker: Option<Worker>,
}

fn parse_seal(s: &str) -> Result<SealMode, String> {
    s.parse()
}

#[derive(clap::Subcommand, Debug)]
pub enum Worker {
    /// Internal: the sealing child process the suite starts, steers and kills.
    #[command(hide = true)]
    SealWorker {
        #[arg(long)]
        sector_size: String,
        #[arg(long)]
        dir: PathBuf,
        /// Stop after this many sectors (default: until killed).
        #[arg(long)]
        max_sectors: Option<u64>,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(Worker::SealWorker {
        sector_size,
        dir,
        max_sectors,
    }) = args.worker
    {
        // Die with the parent: an orphaned sealer would skew every later benchmark.
        // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag on this process.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        }
        super::seal::worker_main(&sector_size, &dir, max_sectors)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(name) = &args.print_suite {
        print!("{}", Suite::builtin_text(name)?);
        return Ok(ExitCode::SUCCESS);
    }
    let (suite, text) = Suite::load(&args.suite)?;
    let step = std::time::Duration::from_millis(suite.sample_interval_ms.max(1));
    let gpu = run::gpu_sampler(&args.sim_gpu, step)
        .map_err(|e| anyhow::anyhow!("--sim-gpu {}: {e}", args.sim_gpu))?;
    let out = match args.out {
        Some(o) => o,
        None => {
            let secs = crate::util::now_ms() / 1000;
            args.dirs.load()?.1.join("bench").join(secs.to_string())
        }
    };
    let cancel = CancellationToken::new();
    // Ctrl-C stops the phases early; the report is still written and says so.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let c = cancel.clone();
    let signal_thread = std::thread::spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {
                    tracing::warn!("interrupted: finishing the current window and writing a partial report");
                    c.cancel();
                }
                _ = c.cancelled() => {}
            }
        })
    });
    let progress = match args.progress.as_str() {
        "always" => true,
        "never" => false,
        _ => std::io::stderr().is_terminal(),
    };
    tracing::info!(suite = %suite.name, out = %out.display(), "running the co-mining benchmark");
    let result = run::run(RunOptions {
        suite,
        suite_text: text,
        out: out.clone(),
        seal: args.seal,
        input: args.input,
        progress,
        cancel: cancel.clone(),
        gpu: Some(gpu),
        power: None,
    });
    let interrupted = cancel.is_cancelled();
    cancel.cancel();
    let _ = signal_thread.join();
    let mut report = result?;
    if args.redact {
        crate::report::redact::redact(&mut report).context("redacting the report")?;
    }
    let files = crate::report::write_all(&report, &out).context("writing the report")?;
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
    for f in &files {
        tracing::info!("wrote {}", f.display());
    }
    if args.json {
        crate::util::outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        crate::util::out!("{}", crate::report::markdown::render(&report));
    }
    Ok(if interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}
