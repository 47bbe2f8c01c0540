//! `comine livepeer`: the remote transcoder on its own, with a fixed capacity, no scheduler
//! and no ledger: segments go through the [`EnginePipeline`] and are only logged.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::pipeline::EnginePipeline;
use crate::livepeer::sink::{BoxFuture, SinkError};
use crate::livepeer::{CapacityArg, LivepeerArgs, SegmentFailure, SegmentRecord, SegmentSink};
use crate::transcode::EncoderChoice;

/// `comine livepeer`: run the remote transcoder standalone with a fixed capacity.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub livepeer: LivepeerArgs,
    #[arg(long, value_enum, default_value_t = EncoderChoice::Auto)]
    pub encoder: EncoderChoice,
    /// libx264 preset when encoding on the CPU.
    #[arg(long, default_value = "veryfast")]
    pub x264_preset: String,
    /// GPU index for NVDEC/NVENC.
    #[arg(long, default_value_t = 0)]
    pub gpu: u32,
    /// The config file (its `[livepeer]` section and `data_dir`) and data directory
    /// (scratch space under DIR/livepeer/work).
    #[command(flatten)]
    pub dirs: crate::config::DataDirArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (config, data_dir) = args.dirs.load()?;
    let lp = config.livepeer.under(&args.livepeer)?;
    let capacity = match lp.capacity {
        Some(CapacityArg::Fixed(n)) => n,
        Some(CapacityArg::Auto) => anyhow::bail!(
            "--capacity auto needs the co-mining scheduler (comine run); give comine livepeer a fixed --capacity N"
        ),
        None => anyhow::bail!(
            "comine livepeer needs --capacity N (the sessions to offer); `comine run --orch-addr …` decides it with the scheduler"
        ),
    };
    let mut cfg = lp.to_config()?;
    let pipeline = Arc::new(EnginePipeline::new(
        args.encoder,
        args.x264_preset,
        args.gpu,
    ));
    cfg.work_dir = data_dir.join("livepeer").join("work");
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("interrupt: cancelling segments in flight (the orchestrator gets error parts and retries elsewhere), then exiting");
                signal.cancel();
            }
        });
        // Fixed capacity: the sender lives as long as the client.
        let (_tx, rx) = watch::channel(capacity);
        crate::livepeer::run_transcoder(cfg, rx, pipeline, Arc::new(LoggingSink), shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Logs every segment and keeps nothing (the standalone `comine livepeer`).
#[derive(Clone, Copy, Debug, Default)]
pub struct LoggingSink;

impl SegmentSink for LoggingSink {
    fn segment_transcoded<'a>(
        &'a self,
        r: &'a SegmentRecord,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            tracing::info!(
                task_id = r.task_id,
                session = %r.session_id,
                seq = r.seq,
                renditions = r.renditions.len(),
                encoded_pixels = r.encoded_pixels,
                download_ms = r.download_ms,
                transcode_ms = r.transcode_ms,
                upload_ms = r.upload_ms,
                accepted = r.accepted,
                "segment transcoded"
            );
            Ok(())
        })
    }

    fn segment_failed<'a>(&'a self, f: &'a SegmentFailure) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            tracing::warn!(task_id = f.task_id, session = %f.session_id, reason = %f.reason, "segment failed");
            Ok(())
        })
    }
}
