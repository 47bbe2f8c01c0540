//! One task: fetch the segment, transcode it within the orchestrator's deadline, post the
//! renditions (or an error part) to `/transcodeResults`, then hand it to the sink.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::OwnedSemaphorePermit;

use crate::transcode::{self, Input, Options, Request};

use super::client::{chain, Shared};
use super::multipart::{self, Part};
use super::profiles;
use super::proto::NotifySegment;
use super::sink::{RenditionOutput, SegmentFailure, SegmentRecord};

/// `Authorization` value go-livepeer's orchestrator expects.
pub const PROTOCOL_VERSION: &str = "Livepeer-Transcoder-1.0";
/// Content type of an error result.
pub const TRANSCODING_ERROR_MIME: &str = "livepeer/transcoding-error";

struct Failure {
    reason: String,
    bad_input: bool,
}

impl Failure {
    fn ours(reason: impl Into<String>) -> Self {
        Failure {
            reason: reason.into(),
            bad_input: false,
        }
    }
    fn input(reason: impl Into<String>) -> Self {
        Failure {
            reason: reason.into(),
            bad_input: true,
        }
    }
}

struct Done {
    report: transcode::Report,
    segment_bytes: u64,
    parts: Vec<Part>,
    renditions: Vec<RenditionOutput>,
    download_ms: u64,
    transcode_ms: u64,
}

/// The orchestrator's deadline for a segment of `duration_ms`: max(floor, 4 × duration).
pub fn deadline_for(duration_ms: u32, floor: Duration) -> Duration {
    floor.max(Duration::from_millis(4 * u64::from(duration_ms)))
}

pub(super) async fn handle(
    shared: Arc<Shared>,
    n: NotifySegment,
    http: reqwest::Client,
    received: Instant,
    permit: Option<OwnedSemaphorePermit>,
) {
    let cfg = &shared.cfg;
    let seg = n.seg_data.clone().unwrap_or_default();
    let session_id = n.session_key();
    let duration_ms = if seg.duration > 0 {
        seg.duration as u32
    } else {
        2000
    };
    let budget = deadline_for(duration_ms, cfg.deadline_floor);
    let o_deadline = received + budget;
    // Stop a little early so the error part reaches the O before it gives up on us.
    let work_deadline = o_deadline - (budget / 10).min(Duration::from_millis(500));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let work_dir = cfg.work_dir.join(format!("task-{}-{nanos:09}", n.task_id));

    let result = if permit.is_none() {
        Err(Failure::ours(format!(
            "transcoder overloaded: {} tasks already in flight",
            cfg.max_in_flight
        )))
    } else {
        work(&shared, &n, &http, &session_id, work_deadline, &work_dir).await
    };
    let upload_timeout = o_deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(5));
    match result {
        Ok(done) => {
            let boundary = multipart::boundary();
            let body = multipart::encode(&boundary, &done.parts);
            let t = Instant::now();
            let posted = post(
                &shared,
                &http,
                n.task_id,
                &format!("multipart/mixed; boundary={boundary}"),
                done.report.decoded_pixels,
                body,
                upload_timeout,
            )
            .await;
            let upload_ms = t.elapsed().as_millis() as u64;
            if let Err(e) = &posted {
                tracing::warn!(task_id = n.task_id, error = %e, "posting results failed");
            }
            let record = SegmentRecord {
                orch_addr: cfg.orch_addr.clone(),
                task_id: n.task_id,
                session_id: session_id.clone(),
                manifest_id: String::from_utf8_lossy(&seg.manifest_id).into_owned(),
                seq: seg.seq,
                duration_ms,
                segment_bytes: done.segment_bytes,
                media_seconds: done.report.media_seconds,
                decoded_pixels: done.report.decoded_pixels,
                encoded_pixels: done.report.encoded_pixels,
                renditions: done.renditions,
                download_ms: done.download_ms,
                transcode_ms: done.transcode_ms,
                upload_ms,
                total_ms: received.elapsed().as_millis() as u64,
                accepted: posted.is_ok(),
            };
            if let Err(e) = shared.sink.segment_transcoded(&record).await {
                tracing::error!(task_id = n.task_id, error = %e, "segment sink failed");
            }
        }
        Err(fail) => {
            tracing::warn!(task_id = n.task_id, url = %n.url, reason = %fail.reason, bad_input = fail.bad_input, "segment failed; posting an error part");
            let posted = post(
                &shared,
                &http,
                n.task_id,
                TRANSCODING_ERROR_MIME,
                0,
                fail.reason.clone().into_bytes(),
                upload_timeout,
            )
            .await;
            if let Err(e) = &posted {
                tracing::warn!(task_id = n.task_id, error = %e, "posting the error part failed");
            }
            let failure = SegmentFailure {
                orch_addr: cfg.orch_addr.clone(),
                task_id: n.task_id,
                session_id,
                manifest_id: String::from_utf8_lossy(&seg.manifest_id).into_owned(),
                seq: seg.seq,
                reason: fail.reason,
                bad_input: fail.bad_input,
            };
            if let Err(e) = shared.sink.segment_failed(&failure).await {
                tracing::error!(task_id = n.task_id, error = %e, "segment sink failed");
            }
        }
    }
    if let Err(e) = tokio::fs::remove_dir_all(&work_dir).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %work_dir.display(), error = %e, "cannot remove the task's work directory");
        }
    }
    drop(permit);
}

async fn work(
    shared: &Shared,
    n: &NotifySegment,
    http: &reqwest::Client,
    session_id: &str,
    deadline: Instant,
    work_dir: &Path,
) -> Result<Done, Failure> {
    let cfg = &shared.cfg;
    let seg = n.seg_data.clone().unwrap_or_default();
    if seg.duration < 0 {
        return Err(Failure::input(format!(
            "invalid segment duration {} ms",
            seg.duration
        )));
    }
    if seg.calc_perceptual_hash {
        return Err(Failure::input(
            "a perceptual hash (MPEG-7 video signature) was requested; comine does not compute it and does not advertise capability 14",
        ));
    }
    let lp_profiles = profiles::select(&seg).to_vec();
    let engine_profiles = profiles::to_engine(&lp_profiles).map_err(Failure::input)?;

    let session = shared.sessions.get(
        session_id,
        seg.force_session_reinit,
        cfg.session_idle_timeout,
    );
    let _order = tokio::time::timeout_at(deadline.into(), session.order.lock())
        .await
        .map_err(|_| {
            Failure::ours("deadline exceeded waiting for the session's previous segment")
        })?;

    let t0 = Instant::now();
    if t0 >= deadline {
        return Err(Failure::ours(
            "deadline exceeded before the segment could be fetched",
        ));
    }
    let data = download(http, &n.url, deadline, cfg.max_segment_bytes).await?;
    let download_ms = t0.elapsed().as_millis() as u64;
    let segment_bytes = data.len() as u64;

    let t1 = Instant::now();
    let request = Request {
        input: Input::Memory(data),
        profiles: engine_profiles,
        out_dir: work_dir.to_path_buf(),
        options: Options {
            encoder: cfg.encoder,
            x264_preset: cfg.x264_preset.clone(),
            gpu: cfg.gpu,
            deadline: Some(deadline),
            cancel: shared.shutdown.child_token(),
            ..Options::default()
        },
    };
    let report = tokio::task::spawn_blocking(move || transcode::transcode(&request))
        .await
        .map_err(|e| Failure::ours(format!("transcode thread failed: {e}")))?
        .map_err(|e| {
            // Past the deadline the engine stops early, and what it stopped with (often
            // "no frame decoded") would blame the segment: name the deadline instead.
            if Instant::now() >= deadline {
                Failure::ours(format!(
                    "deadline exceeded: the transcode did not finish within {} ms ({e})",
                    deadline.saturating_duration_since(t0).as_millis()
                ))
            } else {
                Failure {
                    bad_input: e.is_bad_input(),
                    reason: e.to_string(),
                }
            }
        })?;
    let transcode_ms = t1.elapsed().as_millis() as u64;
    if let Some(reason) = &report.fallback_reason {
        tracing::debug!(%reason, "hardware path not used");
    }
    if report.renditions.len() != lp_profiles.len() {
        return Err(Failure::ours(format!(
            "segment / profile mismatch: {} renditions for {} profiles",
            report.renditions.len(),
            lp_profiles.len()
        )));
    }

    let mut parts = Vec::with_capacity(lp_profiles.len());
    let mut renditions = Vec::with_capacity(lp_profiles.len());
    for (i, lp) in lp_profiles.iter().enumerate() {
        let name = format!("r{i}");
        let r = report
            .renditions
            .iter()
            .find(|r| r.profile == name)
            .ok_or_else(|| {
                Failure::ours(format!("rendition {name} missing from the engine's report"))
            })?;
        let body: Bytes = tokio::fs::read(&r.path)
            .await
            .map_err(|e| Failure::ours(format!("cannot read rendition {}: {e}", r.path.display())))?
            .into();
        // Header order as Go's multipart writer sorts them.
        parts.push(Part {
            headers: vec![
                ("Content-Length".into(), body.len().to_string()),
                ("Content-Type".into(), r.mime.to_string()),
                ("Pixels".into(), r.pixels.to_string()),
            ],
            body,
        });
        renditions.push(RenditionOutput {
            profile: lp.name.clone(),
            path: r.path.clone(),
            mime: r.mime,
            encoder: r.encoder.clone(),
            width: r.width,
            height: r.height,
            frames: r.frames,
            pixels: r.pixels,
            bytes: r.bytes,
        });
    }
    Ok(Done {
        report,
        segment_bytes,
        parts,
        renditions,
        download_ms,
        transcode_ms,
    })
}

async fn download(
    http: &reqwest::Client,
    url: &str,
    deadline: Instant,
    max_bytes: u64,
) -> Result<Bytes, Failure> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| Failure::input(format!("segment URL {url:?} is invalid: {e}")))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(Failure::input(format!(
            "segment URL {url:?} is not HTTP(S)"
        )));
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    let mut resp = http
        .get(parsed)
        .timeout(remaining)
        .send()
        .await
        .map_err(|e| fetch_failure(url, &e))?;
    if !resp.status().is_success() {
        return Err(Failure::input(format!(
            "fetching segment {url} returned HTTP {}",
            resp.status()
        )));
    }
    if resp.content_length().is_some_and(|len| len > max_bytes) {
        return Err(Failure::input(format!(
            "segment {url} is larger than {max_bytes} bytes"
        )));
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| fetch_failure(url, &e))? {
        if (buf.len() + chunk.len()) as u64 > max_bytes {
            return Err(Failure::input(format!(
                "segment {url} is larger than {max_bytes} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

fn fetch_failure(url: &str, e: &reqwest::Error) -> Failure {
    if e.is_timeout() {
        Failure::ours(format!("deadline exceeded while fetching segment {url}"))
    } else {
        Failure::ours(format!("cannot fetch segment {url}: {}", chain(e)))
    }
}

async fn post(
    shared: &Shared,
    http: &reqwest::Client,
    task_id: i64,
    content_type: &str,
    pixels: u64,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(), String> {
    let cfg = &shared.cfg;
    let url = format!("https://{}/transcodeResults", cfg.orch_addr);
    let resp = http
        .post(&url)
        .header("Authorization", PROTOCOL_VERSION)
        .header("Credentials", &cfg.secret)
        .header("TaskId", task_id.to_string())
        .header("Pixels", pixels.to_string())
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {}", chain(&e)))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(format!(
            "POST {url} returned HTTP {status}: {}",
            text.trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_is_four_durations_with_an_eight_second_floor() {
        let floor = Duration::from_secs(8);
        assert_eq!(deadline_for(2000, floor), Duration::from_secs(8));
        assert_eq!(deadline_for(6000, floor), Duration::from_secs(24));
    }
}
