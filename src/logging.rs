//! Log set-up: human-readable by default, JSON lines with `--log-format json`.
//!
//! Everything logs through `tracing`; libav's own log is routed here too (see
//! `transcode::avlog`) so operators see one stream.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines on stderr.
    #[default]
    Text,
    /// One JSON object per line on stderr, for log shippers.
    Json,
}

/// Installs the global subscriber. Logs go to stderr so `--json` output on stdout stays clean.
///
/// The level comes from `RUST_LOG` when set (e.g. `RUST_LOG=comine=debug`), else `default_level`.
pub fn init(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log that cannot be written (stderr on a full disk) must not take the daemon down:
        // reporting that failure uses `eprintln!`, which panics in whichever thread logged,
        // e.g. the database writer reporting the very full disk.
        .log_internal_errors(false);
    // try_init: tests and embedders may already have installed a subscriber.
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
