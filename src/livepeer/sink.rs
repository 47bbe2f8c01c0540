//! Where a finished segment goes after its results are posted: the [`SegmentSink`] the
//! daemon implements to store renditions and account the segment in the ledger.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
#[cfg(any(test, feature = "test-utils"))]
use std::sync::Mutex;

use serde::Serialize;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// One rendition as posted to the orchestrator.
#[derive(Clone, Debug, Serialize)]
pub struct RenditionOutput {
    /// The orchestrator's profile name.
    pub profile: String,
    /// Valid only during the sink call: the working directory is removed afterwards.
    pub path: PathBuf,
    pub mime: &'static str,
    /// `libx264` or `h264_nvenc`: which encoder made it.
    pub encoder: String,
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    /// Encoded pixels, as posted in the part's `Pixels` header.
    pub pixels: u64,
    pub bytes: u64,
}

/// A segment transcoded and posted.
#[derive(Clone, Debug, Serialize)]
pub struct SegmentRecord {
    pub orch_addr: String,
    pub task_id: i64,
    pub session_id: String,
    pub manifest_id: String,
    pub seq: i64,
    pub duration_ms: u32,
    /// Bytes of the source segment as downloaded.
    pub segment_bytes: u64,
    /// Media seconds decoded (the engine's measure, not the notification's).
    pub media_seconds: f64,
    /// Posted in the request's `Pixels` header.
    pub decoded_pixels: u64,
    /// Σ rendition pixels: what the orchestrator bills.
    pub encoded_pixels: u64,
    pub renditions: Vec<RenditionOutput>,
    pub download_ms: u64,
    pub transcode_ms: u64,
    pub upload_ms: u64,
    /// From the notification's arrival to the upload's answer: the client's end-to-end.
    pub total_ms: u64,
    /// The orchestrator answered the upload with 2xx.
    pub accepted: bool,
    /// The device that transcoded it, when the pipeline said.
    pub device: Option<super::pipeline::Device>,
    /// The session's warm decoder took it; `encoders_reused` rungs had warm encoders.
    pub decoder_reused: bool,
    pub encoders_reused: u32,
}

/// A segment that failed; an error part was posted with `reason`.
#[derive(Clone, Debug, Serialize)]
pub struct SegmentFailure {
    pub orch_addr: String,
    pub task_id: i64,
    pub session_id: String,
    pub manifest_id: String,
    pub seq: i64,
    pub reason: String,
    /// The failure was the segment's fault (bad media, bad profile), not ours.
    pub bad_input: bool,
}

/// Stores renditions and accounts segments. Called once per task, after the upload.
pub trait SegmentSink: Send + Sync + 'static {
    /// Copy or move what must be kept out of `record.renditions[..].path` before returning.
    fn segment_transcoded<'a>(
        &'a self,
        record: &'a SegmentRecord,
    ) -> BoxFuture<'a, Result<(), SinkError>>;

    fn segment_failed<'a>(
        &'a self,
        failure: &'a SegmentFailure,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        let _ = failure;
        Box::pin(async { Ok(()) })
    }

    /// The orchestrator ended a session (teardown notification) after `segments` segments.
    fn session_ended<'a>(
        &'a self,
        session_id: &'a str,
        segments: u64,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        let _ = (session_id, segments);
        Box::pin(async { Ok(()) })
    }
}

/// Keeps every record in memory (tests and benchmarks).
#[cfg(any(test, feature = "test-utils"))]
#[derive(Debug, Default)]
pub struct MemorySink {
    pub transcoded: Mutex<Vec<SegmentRecord>>,
    pub failed: Mutex<Vec<SegmentFailure>>,
    /// (session ID, segments) per teardown.
    pub ended: Mutex<Vec<(String, u64)>>,
}

#[cfg(any(test, feature = "test-utils"))]
impl SegmentSink for MemorySink {
    fn segment_transcoded<'a>(
        &'a self,
        r: &'a SegmentRecord,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if let Ok(mut v) = self.transcoded.lock() {
                v.push(r.clone());
            }
            Ok(())
        })
    }

    fn segment_failed<'a>(&'a self, f: &'a SegmentFailure) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if let Ok(mut v) = self.failed.lock() {
                v.push(f.clone());
            }
            Ok(())
        })
    }

    fn session_ended<'a>(
        &'a self,
        session_id: &'a str,
        segments: u64,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if let Ok(mut v) = self.ended.lock() {
                v.push((session_id.to_string(), segments));
            }
            Ok(())
        })
    }
}
