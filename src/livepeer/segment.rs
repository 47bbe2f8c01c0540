//! One task: fetch the segment, have the [`SegmentPipeline`](super::SegmentPipeline)
//! transcode it within the orchestrator's deadline, post the renditions (or an error part)
//! to `/transcodeResults`, then hand it to the sink.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::OwnedSemaphorePermit;

use super::multipart::{self, Part};
use super::pipeline::{SegmentError as Failure, SegmentTask, Transcoded};
use super::proto::{deadline_for, NotifySegment, PROTOCOL_VERSION, TRANSCODING_ERROR_MIME};
use super::sink::{SegmentFailure, SegmentRecord};
use super::{chain, Shared};

struct Done {
    report: Transcoded,
    segment_bytes: u64,
    parts: Vec<Part>,
    download_ms: u64,
    transcode_ms: u64,
}

/// Whether a new stream is refused here while the capacity drains, and the limit it met: a
/// stream not running here yet starts only if the running ones leave room under the grant.
/// It is decided when the notification arrives, before any work, so the orchestrator places
/// the stream elsewhere at once and the handover does not count it as bound here; a stream
/// already running is never refused.
pub(super) fn refuse_new_stream(shared: &Shared, n: &NotifySegment) -> Option<u32> {
    if n.teardown_session().is_some() {
        return None;
    }
    let limit = shared.drain.stream_limit()?;
    let live_for = deadline_for(n.duration_ms(), Duration::ZERO);
    (!shared.sessions.admit(&n.session_key(), limit, live_for)).then_some(limit)
}

pub(super) async fn handle(
    shared: Arc<Shared>,
    n: NotifySegment,
    http: reqwest::Client,
    received: Instant,
    permit: Option<OwnedSemaphorePermit>,
    refused: Option<u32>,
) {
    let cfg = &shared.cfg;
    let seg = n.seg_data.clone().unwrap_or_default();
    let session_id = n.session_key();
    let duration_ms = seg.duration_ms();
    let budget = deadline_for(duration_ms, cfg.deadline_floor);
    let o_deadline = received + budget;
    // Stop a little early so the error part reaches the O before it gives up on us.
    let work_deadline = o_deadline - (budget / 10).min(Duration::from_millis(500));
    let nanos = crate::util::subsec_nanos();
    let work_dir = cfg.work_dir.join(format!("task-{}-{nanos:09}", n.task_id));

    let result = if let Some(limit) = refused {
        let total = shared.drain.refused();
        tracing::info!(task_id = n.task_id, session = %session_id, limit, refused = total, "capacity draining (GPU needed for a proof): new stream refused");
        Err(Failure::ours(format!(
            "transcoder draining: its GPU is needed for a Filecoin proof and it takes no new stream ({limit} may run); place this stream on another transcoder"
        )))
    } else if permit.is_none() {
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
                Upload {
                    content_type: &format!("multipart/mixed; boundary={boundary}"),
                    pixels: done.report.decoded_pixels,
                    extra_headers: &done.report.result_headers,
                    body,
                },
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
                renditions: done.report.renditions,
                download_ms: done.download_ms,
                transcode_ms: done.transcode_ms,
                upload_ms,
                total_ms: received.elapsed().as_millis() as u64,
                accepted: posted.is_ok(),
                device: done.report.device.clone(),
                decoder_reused: done.report.decoder_reused,
                encoders_reused: done.report.encoders_reused,
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
                Upload {
                    content_type: TRANSCODING_ERROR_MIME,
                    pixels: 0,
                    extra_headers: &[],
                    body: fail.reason.clone().into_bytes(),
                },
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
            // A refused new stream is no failed segment: it never started here.
            let sunk = match refused {
                Some(_) => Ok(()),
                None => shared.sink.segment_failed(&failure).await,
            };
            if let Err(e) = sunk {
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
    let profiles = seg.profiles().to_vec();
    if profiles.is_empty() {
        return Err(Failure::input(
            "segment carries no profiles (fullProfiles3/2/1 are all empty)",
        ));
    }
    shared.pipeline.check(&profiles)?;

    let duration_ms = seg.duration_ms();
    let session = shared.sessions.get(
        session_id,
        seg.force_session_reinit,
        cfg.session_idle_timeout,
        deadline_for(duration_ms, Duration::ZERO),
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
    let task = SegmentTask {
        task_id: n.task_id,
        session_id: session_id.to_string(),
        manifest_id: String::from_utf8_lossy(&seg.manifest_id).into_owned(),
        seq: seg.seq,
        duration_ms,
        data,
        profiles: profiles.clone(),
        work_dir: work_dir.to_path_buf(),
        deadline,
        cancel: shared.shutdown.child_token(),
        warm: session.warm.clone(),
    };
    let report = shared.pipeline.transcode(task).await.map_err(|e| {
        // Past the deadline the engine stops early, and what it stopped with (often
        // "no frame decoded") would blame the segment: name the deadline instead.
        if Instant::now() >= deadline {
            Failure::ours(format!(
                "deadline exceeded: the transcode did not finish within {} ms ({e})",
                deadline.saturating_duration_since(t0).as_millis()
            ))
        } else {
            e
        }
    })?;
    let transcode_ms = t1.elapsed().as_millis() as u64;
    if let Some(reason) = &report.fallback_reason {
        tracing::debug!(%reason, "hardware path not used");
    }
    if report.renditions.len() != profiles.len() {
        return Err(Failure::ours(format!(
            "segment / profile mismatch: {} renditions for {} profiles",
            report.renditions.len(),
            profiles.len()
        )));
    }

    let mut parts = Vec::with_capacity(profiles.len());
    for r in &report.renditions {
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
    }
    Ok(Done {
        report,
        segment_bytes,
        parts,
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

/// One `/transcodeResults` request: renditions (multipart) or an error part.
struct Upload<'a> {
    content_type: &'a str,
    /// The request's `Pixels` header (decoded pixels; 0 for an error).
    pixels: u64,
    /// The pipeline's own headers (a signed work receipt), never parts.
    extra_headers: &'a [(String, String)],
    body: Vec<u8>,
}

async fn post(
    shared: &Shared,
    http: &reqwest::Client,
    task_id: i64,
    upload: Upload<'_>,
    timeout: Duration,
) -> Result<(), String> {
    let cfg = &shared.cfg;
    let url = format!("https://{}/transcodeResults", cfg.orch_addr);
    let mut req = http.post(&url);
    for (name, value) in upload.extra_headers {
        req = req.header(name.as_str(), value.as_str());
    }
    let resp = req
        .header("Authorization", PROTOCOL_VERSION)
        .header("Credentials", &cfg.secret)
        .header("TaskId", task_id.to_string())
        .header("Pixels", upload.pixels.to_string())
        .header(reqwest::header::CONTENT_TYPE, upload.content_type)
        .body(upload.body)
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
