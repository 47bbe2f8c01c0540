//! Foundations every module may use: the wall clock, durable file writes, stdout that may
//! be a closed pipe, and the systemd notification protocol.

pub mod durable;
pub mod sd_notify;
pub mod stdout;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_rpc;

// `crate::util::out!` / `crate::util::outln!`: stdout that may be a closed pipe.
pub use crate::{out, outln};

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before 1970). The one wall clock
/// every record (ledger, decisions, telemetry, link state) is stamped with.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Sub-second nanoseconds of the wall clock: cheap uniqueness for scratch names.
pub fn subsec_nanos() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default()
}
