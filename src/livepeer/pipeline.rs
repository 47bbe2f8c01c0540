//! What happens to a downloaded segment before its results are posted: the
//! [`SegmentPipeline`] the daemon implements (admission by the scheduler, then the transcoding
//! engine on the device it granted). This module only describes the work and its result, so
//! the protocol side never depends on the engine, the scheduler or the ledger.

use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::proto::VideoProfile;
use super::sink::{BoxFuture, RenditionOutput};

/// What the pipeline keeps between the segments of one session (the engine's open
/// decoder and encoders), opaque to the protocol side. It lives as long as the session:
/// released on teardown, `ForceSessionReinit` or idle timeout, which closes the contexts.
pub type WarmState = std::sync::Arc<std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>>;

/// One segment to transcode, as the orchestrator asked for it.
#[derive(Clone, Debug)]
pub struct SegmentTask {
    pub task_id: i64,
    pub session_id: String,
    /// The segment's manifest ID (lossy UTF-8) and sequence number.
    pub manifest_id: String,
    pub seq: i64,
    /// Media seconds × 1000 as the orchestrator announced them (2000 when it did not).
    pub duration_ms: u32,
    /// The downloaded segment.
    pub data: Bytes,
    /// The orchestrator's profiles (fullProfiles3 → 2 → 1), in its order.
    pub profiles: Vec<VideoProfile>,
    /// Scratch directory for renditions; removed after the task.
    pub work_dir: PathBuf,
    /// Stop here: the orchestrator gives up shortly after.
    pub deadline: Instant,
    /// Fires on shutdown.
    pub cancel: CancellationToken,
    /// The session's warm state; segments of a session reach the pipeline one at a time.
    pub warm: WarmState,
}

/// The renditions of a [`SegmentTask`]: `renditions[i]` is `profiles[i]`.
#[derive(Clone, Debug)]
pub struct Transcoded {
    pub decoded_pixels: u64,
    pub encoded_pixels: u64,
    pub media_seconds: f64,
    pub renditions: Vec<RenditionOutput>,
    /// Why the hardware path was not used, when it was not.
    pub fallback_reason: Option<String>,
    /// Extra HTTP headers for the `/transcodeResults` request (a signed work receipt).
    /// Never sent as multipart parts: go-livepeer reads an `application/octet-stream` part
    /// as a perceptual hash.
    pub result_headers: Vec<(String, String)>,
    /// The device the work ran on, when the pipeline knows (the scheduler placed it).
    pub device: Option<Device>,
    /// The session's warm decoder took this segment (no decoder was opened for it).
    pub decoder_reused: bool,
    /// Renditions whose encoder came warm from the session's previous segment.
    pub encoders_reused: u32,
}

/// A device as the pipeline names it: index and UUID (`GPU-…`, `host`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Device {
    pub index: u32,
    pub uuid: String,
}

/// Why a segment could not be transcoded; posted to the orchestrator as an error part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentError {
    pub reason: String,
    /// The segment (media, profiles) is at fault, not us.
    pub bad_input: bool,
}

impl SegmentError {
    /// A failure on our side (overload, deadline, I/O).
    pub fn ours(reason: impl Into<String>) -> Self {
        SegmentError {
            reason: reason.into(),
            bad_input: false,
        }
    }
    /// The segment or its profiles are bad.
    pub fn input(reason: impl Into<String>) -> Self {
        SegmentError {
            reason: reason.into(),
            bad_input: true,
        }
    }
}

impl std::fmt::Display for SegmentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Turns a downloaded segment into renditions. Called once per task, on the async runtime:
/// implementations run blocking work (the engine) on a blocking thread.
pub trait SegmentPipeline: Send + Sync + 'static {
    /// Refuses profiles the pipeline cannot make before the segment is downloaded.
    fn check(&self, profiles: &[VideoProfile]) -> Result<(), SegmentError> {
        let _ = profiles;
        Ok(())
    }

    fn transcode(&self, task: SegmentTask) -> BoxFuture<'_, Result<Transcoded, SegmentError>>;
}
