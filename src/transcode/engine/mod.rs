//! The pipeline: demux and decode on the calling thread ([`decode`]), one worker thread per
//! rendition ([`rendition`]: filter graph → encoder → muxer) fed frames by reference, and
//! outputs written to temporary files that are renamed into place only when every rendition
//! succeeded ([`output`]). This file wires them together and owns the stop rules.

mod decode;
mod output;
mod rendition;
mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

use ffmpeg_next::{codec, format, frame, media, Packet, Rational};
use tokio_util::sync::CancellationToken;

use super::{avlog, input, profile, Profile, Report, Request, TranscodeError};
use decode::{decode_all, open_decoder};
use rendition::Worker;
use session::DecoderKey;
pub use session::{WarmSession, WarmUse};

/// Frames queued per rendition worker. Small: frames are large and the decoder is
/// rarely the bottleneck, so a deep queue only costs memory.
const QUEUE_DEPTH: usize = 3;

/// Decides when a job must stop: the caller cancelled, the deadline passed, the job's own
/// wall-time bound passed, or a sibling worker failed (`abort`, a child token that never
/// cancels the caller's). Every loop of the pipeline asks it: the demuxer (through libav's
/// interrupt callback and per packet), the decoder drain, the filter drain and the encoder
/// drain and flush, so a stopped job ends within one frame's work.
#[derive(Clone)]
pub(super) struct Stop {
    pub(super) abort: CancellationToken,
    deadline: Option<Instant>,
    started: Instant,
    /// The wall-time bound in ms since `started`, grown by the decoder as media arrives
    /// (see [`super::WallBound`]); `u64::MAX` when the job has none.
    bound_ms: Arc<AtomicU64>,
}

impl Stop {
    pub(super) fn check(&self) -> Result<(), TranscodeError> {
        if self.abort.is_cancelled() {
            return Err(TranscodeError::Cancelled);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(TranscodeError::DeadlineExceeded {
                elapsed_ms: self.started.elapsed().as_millis() as u64,
            });
        }
        let bound_ms = self.bound_ms.load(Ordering::Relaxed);
        let elapsed_ms = self.started.elapsed().as_millis() as u64;
        if elapsed_ms > bound_ms {
            return Err(TranscodeError::WallBound {
                elapsed_ms,
                bound_ms,
            });
        }
        Ok(())
    }
    fn should_stop(&self) -> bool {
        self.check().is_err()
    }
}

/// How the wall-time bound grows: `floor_ms + max(frames decoded, frames declared) × per_frame_ms`.
pub(super) struct Budget {
    bound_ms: Arc<AtomicU64>,
    floor_ms: f64,
    per_frame_ms: f64,
    declared_frames: f64,
}

impl Budget {
    pub(super) fn grow(&self, frames: u64) {
        if self.per_frame_ms <= 0.0 {
            return;
        }
        let ms = self.floor_ms + (frames as f64).max(self.declared_frames) * self.per_frame_ms;
        self.bound_ms
            .store(ms.min(u64::MAX as f64 / 2.0) as u64, Ordering::Relaxed);
    }
}

/// The caller's own stop (its cancel token or its deadline), ignoring `abort`, which
/// siblings also trip: when it fired, it is the reason for whatever error followed.
/// libav's interrupt callback cuts probing short, and a half-probed segment reads as
/// "no frame could be decoded"; the caller must see "cancelled" or "deadline".
fn caller_stop(req: &Request, started: Instant) -> Option<TranscodeError> {
    if req.options.cancel.is_cancelled() {
        return Some(TranscodeError::Cancelled);
    }
    if req.options.deadline.is_some_and(|d| Instant::now() >= d) {
        return Some(TranscodeError::DeadlineExceeded {
            elapsed_ms: started.elapsed().as_millis() as u64,
        });
    }
    None
}

/// What the decoder sends each rendition worker.
pub(super) enum Msg {
    Video(Arc<frame::Video>),
    Audio(Packet),
}

/// Transcodes `req.input` into one file per profile in `req.out_dir`.
///
/// Blocking; run it on a dedicated thread. See the module docs of
/// [`crate::transcode`] for the pipeline and the guarantees on failure.
pub fn transcode(req: &Request) -> Result<Report, TranscodeError> {
    transcode_warm(req, &mut WarmSession::new())
}

/// [`transcode`] as one segment of a stream: the decoder and encoders the stream's previous
/// segment left open in `session` are reused where they fit, and this segment's are left
/// there for the next one (see [`WarmSession`]). A failed segment leaves nothing open.
pub fn transcode_warm(req: &Request, session: &mut WarmSession) -> Result<Report, TranscodeError> {
    let started = Instant::now();
    let result = run(req, started, session).map_err(|e| caller_stop(req, started).unwrap_or(e));
    if result.is_err() {
        session.failed();
    }
    result
}

fn run(
    req: &Request,
    started: Instant,
    session: &mut WarmSession,
) -> Result<Report, TranscodeError> {
    avlog::install();
    ffmpeg_next::init().map_err(|e| TranscodeError::Ffmpeg {
        what: "initialising libav",
        reason: e.to_string(),
    })?;
    profile::validate_ladder(&req.profiles)?;
    for p in &req.profiles {
        if p.codec != super::VideoCodec::H264 {
            return Err(TranscodeError::UnsupportedCodec {
                profile: p.name.clone(),
                codec: p.codec,
            });
        }
    }
    let stop = Stop {
        abort: req.options.cancel.child_token(),
        deadline: req.options.deadline,
        started,
        bound_ms: Arc::new(AtomicU64::new(match req.options.wall_bound {
            // Until the ladder is known, the floor bounds probing and opening.
            Some(b) => b.floor.as_millis() as u64,
            None => u64::MAX,
        })),
    };
    stop.check()?;

    let interrupt = {
        let stop = stop.clone();
        move || stop.should_stop()
    };
    let mut ictx = input::open(&req.input, interrupt)?;

    let (vidx, vtb, vparams, src_rate) = {
        let s = ictx
            .streams()
            .best(media::Type::Video)
            .ok_or_else(|| TranscodeError::NoVideo(describe_streams(&ictx)))?;
        (s.index(), s.time_base(), s.parameters(), stream_rate(&s))
    };
    let audio = ictx.streams().best(media::Type::Audio).map(|s| AudioIn {
        index: s.index(),
        time_base: s.time_base(),
        params: s.parameters(),
    });

    let mut warm = WarmUse::default();
    let decoder_key = DecoderKey::new(&vparams, &req.options);
    let (mut dec, decoder_opened) = match session.take_decoder(&decoder_key, &mut warm) {
        Some(d) => (d, false),
        None => (open_decoder(vparams, &req.options)?, true),
    };
    let decoder = &mut dec.decoder;
    let (src_w, src_h) = (decoder.width(), decoder.height());
    if src_w == 0 || src_h == 0 {
        // The prober saw a video stream but never a decodable picture header.
        return Err(TranscodeError::NoFrames { decode_errors: 0 });
    }
    let src_pixels = src_w as u64 * src_h as u64;
    if src_pixels > req.options.max_input_pixels {
        return Err(TranscodeError::TooLarge {
            width: src_w,
            height: src_h,
            pixels: src_pixels,
            max: req.options.max_input_pixels,
        });
    }
    let sar = decoder.aspect_ratio();

    std::fs::create_dir_all(&req.out_dir).map_err(|e| TranscodeError::Output {
        path: req.out_dir.display().to_string(),
        reason: e.to_string(),
    })?;

    // Renditions scale from what the transform makes of each frame.
    let (fit_w, fit_h) = match &req.options.transform {
        Some(t) => t.0.output_size(src_w, src_h),
        None => (src_w, src_h),
    };
    let dims: Vec<(u32, u32)> = req
        .profiles
        .iter()
        .map(|p| {
            profile::fit_dimensions(
                fit_w,
                fit_h,
                (sar.numerator(), sar.denominator()),
                p.width,
                p.height,
            )
        })
        .collect();
    let threads = encoder_threads(&req.profiles, &dims, src_rate, req.options.encode_cores);
    let mut workers = Vec::with_capacity(req.profiles.len());
    let mut fallback_reason = None;
    let mut encoder_choice = req.options.encoder;
    for ((p, &size), &threads) in req.profiles.iter().zip(&dims).zip(&threads) {
        let w = Worker::open(
            p,
            req,
            encoder_choice,
            size,
            src_rate,
            vtb,
            audio.as_ref(),
            threads,
            session,
        )?;
        if w.reused {
            warm.encoders_reused += 1;
        }
        if fallback_reason.is_none() {
            fallback_reason = w.fallback_reason.clone();
        }
        // NVENC that cannot load at all will not load for the next rung either; a
        // session cap, by contrast, may still leave room for a smaller rung's retry.
        if w.nvenc_unavailable {
            encoder_choice = super::EncoderChoice::X264;
        }
        workers.push(w);
    }
    if fallback_reason.is_none() {
        fallback_reason = dec.fallback_reason.clone();
    }
    let budget = budget(req, &stop, src_pixels, src_rate, &dims);
    budget.grow(0);
    // The segment's fixed cost: probing, the decoder, every encoder and muxer (what a warm
    // session saves in part).
    let setup = started.elapsed();

    let (decoded, finished) = std::thread::scope(|scope| {
        let mut senders = Vec::with_capacity(workers.len());
        let mut handles = Vec::with_capacity(workers.len());
        for (i, w) in workers.into_iter().enumerate() {
            let (tx, rx) = sync_channel::<Msg>(QUEUE_DEPTH);
            let worker_stop = stop.clone();
            let handle = std::thread::Builder::new()
                .name(format!("comine-enc-{i}"))
                .spawn_scoped(scope, move || {
                    let result = w.run(rx, &worker_stop);
                    if result.is_err() {
                        worker_stop.abort.cancel(); // siblings and the decoder stop early
                    }
                    result
                });
            match handle {
                Ok(h) => {
                    handles.push(h);
                    senders.push(tx);
                }
                Err(e) => {
                    stop.abort.cancel();
                    return (
                        Err(TranscodeError::Ffmpeg {
                            what: "starting an encode thread",
                            reason: e.to_string(),
                        }),
                        Vec::new(),
                    );
                }
            }
        }
        let decoded = decode_all(
            &mut ictx,
            decoder,
            vidx,
            vtb,
            src_rate,
            audio.as_ref(),
            &senders,
            req.options.transform.as_ref().map(|t| &*t.0),
            &stop,
            &budget,
        );
        if decoded.is_err() {
            stop.abort.cancel();
        }
        drop(senders); // closes the queues: workers flush and finish
        let finished: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(TranscodeError::Ffmpeg {
                        what: "encoding",
                        reason: "an encode thread panicked".into(),
                    })
                })
            })
            .collect();
        (decoded, finished)
    });

    // A caller's cancel or deadline wins over the secondary errors it caused. Otherwise
    // the first real error wins over the "cancelled" that `abort` spread to the others.
    if let Some(e) = caller_stop(req, started) {
        return Err(e);
    }
    let mut done = Vec::with_capacity(finished.len());
    let mut first_err = None;
    for f in finished {
        match f {
            Ok(d) => done.push(d),
            Err(TranscodeError::Cancelled) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e); // `done` drops here and removes every temporary file
    }
    let decoded = decoded?;
    tracing::debug!(
        target: "comine::transcode::stages",
        wall_ms = started.elapsed().as_millis() as u64,
        decoder_blocked_ms = decoded.blocked.as_millis() as u64,
        "decode stage profile"
    );
    if done.len() < req.profiles.len() {
        // Every worker stopped on `abort` with nothing else to say.
        return Err(TranscodeError::Cancelled);
    }
    if decoded.frames == 0 {
        return Err(TranscodeError::NoFrames {
            decode_errors: decoded.errors,
        });
    }
    let mut renditions = Vec::with_capacity(done.len());
    let mut warm_encoders = Vec::new();
    for mut d in done {
        warm_encoders.extend(d.warm.take());
        renditions.push(d.commit()?);
    }
    // Drained to EOF above; reset, the decoder takes the stream's next segment.
    dec.decoder.flush();
    let decoder_name = dec.name.clone();
    session.opened(
        decoder_opened,
        req.profiles.len() as u64 - u64::from(warm.encoders_reused),
    );
    session.keep((decoder_key, dec), warm_encoders);
    let wall = started.elapsed();
    let media_seconds = decoded.media_seconds(vtb, src_rate);
    if decoded.errors > 0 {
        tracing::warn!(
            decode_errors = decoded.errors,
            frames = decoded.frames,
            "input is damaged or truncated; transcoded the frames that decoded"
        );
    }
    Ok(Report {
        decoded_pixels: decoded.pixels,
        decoded_frames: decoded.frames,
        decode_errors: decoded.errors,
        decoder: if decoded.hw_frames > 0 {
            format!("{decoder_name} (nvdec)")
        } else {
            decoder_name
        },
        input_width: src_w,
        input_height: src_h,
        media_seconds,
        wall_ms: wall.as_millis() as u64,
        setup_us: setup.as_micros() as u64,
        realtime_factor: if wall.as_secs_f64() > 0.0 {
            media_seconds / wall.as_secs_f64()
        } else {
            0.0
        },
        encoded_pixels: renditions.iter().map(|r| r.pixels).sum(),
        timestamp_jumps: decoded.jumps,
        fallback_reason,
        renditions,
        warm,
    })
}

/// The input's audio stream, copied into every rendition.
pub(super) struct AudioIn {
    pub(super) index: usize,
    pub(super) time_base: Rational,
    pub(super) params: codec::Parameters,
}

fn describe_streams(ictx: &format::context::Input) -> String {
    let kinds: Vec<String> = ictx
        .streams()
        .map(|s| {
            let p = s.parameters();
            format!("{:?} {:?}", p.medium(), p.id()).to_lowercase()
        })
        .collect();
    if kinds.is_empty() {
        "no streams".into()
    } else {
        kinds.join(", ")
    }
}

fn stream_rate(s: &format::stream::Stream) -> Rational {
    [s.avg_frame_rate(), s.rate()]
        .into_iter()
        .find(|r| {
            r.numerator() > 0 && r.denominator() > 0 && (r.numerator() / r.denominator()) <= 1000
        })
        .unwrap_or(Rational::new(30, 1))
}

/// The job's wall-time bound: its floor, then per input frame the pixel work of decoding
/// it and of every rung's output frames it yields, at the bound's minimum pixel rate.
fn budget(
    req: &Request,
    stop: &Stop,
    src_pixels: u64,
    src_rate: Rational,
    dims: &[(u32, u32)],
) -> Budget {
    let src_fps = fps_of(src_rate);
    let Some(b) = req.options.wall_bound.filter(|b| b.min_pixel_rate > 0.0) else {
        stop.bound_ms.store(u64::MAX, Ordering::Relaxed);
        return Budget {
            bound_ms: Arc::clone(&stop.bound_ms),
            floor_ms: 0.0,
            per_frame_ms: 0.0,
            declared_frames: 0.0,
        };
    };
    let out_pixels: f64 = req
        .profiles
        .iter()
        .zip(dims)
        .map(|(p, &(w, h))| {
            let per_input = p.fps().map_or(1.0, |f| (f / src_fps).max(1.0));
            w as f64 * h as f64 * per_input
        })
        .sum();
    Budget {
        bound_ms: Arc::clone(&stop.bound_ms),
        floor_ms: b.floor.as_secs_f64() * 1000.0,
        per_frame_ms: (src_pixels as f64 + out_pixels) / b.min_pixel_rate * 1000.0,
        declared_frames: req
            .options
            .media_duration
            .map_or(0.0, |d| d.as_secs_f64() * src_fps),
    }
}

fn fps_of(rate: Rational) -> f64 {
    rate.numerator() as f64 / rate.denominator().max(1) as f64
}

/// Threads the ladder's encoders share per core. One per core left a quarter of a 2-core
/// host idle (cores kept busy 1.64 on the balanced ladder, 1.78 on the top-heavy one: the
/// top rung's frame threads wait on each other and the small rungs finish early); 1.5 per
/// core keeps 1.81 and 1.82 busy and cut the wall time 5% and 3% against the ffmpeg CLI in
/// the same run (`cargo bench --bench ladder`, 7 rounds, quiet host). 2 per core measured
/// the same as 1.5 and holds more frames in memory. (x264's own default is 1.5 per core
/// *per encoder*, which a ladder multiplies by its rungs.)
const THREADS_PER_CORE: f64 = 1.5;

/// libx264 threads per rendition, proportional to each rung's output pixel rate so the
/// largest rung (usually half the work) is not the critical path.
fn encoder_threads(
    profiles: &[Profile],
    dims: &[(u32, u32)],
    src_rate: Rational,
    cores: usize,
) -> Vec<usize> {
    let cores = if cores > 0 {
        cores
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    let src_fps = fps_of(src_rate);
    let rates: Vec<f64> = profiles
        .iter()
        .zip(dims)
        .map(|(p, &(w, h))| w as f64 * h as f64 * p.fps().unwrap_or(src_fps).min(src_fps.max(1.0)))
        .collect();
    let total: f64 = rates.iter().sum::<f64>().max(1.0);
    let budget = cores as f64 * THREADS_PER_CORE;
    rates
        .iter()
        // Rounded up, not to the nearest: on 2 cores a top rung with 73% of the pixels
        // got 1 thread, became the critical path and left a core idle once the small
        // rungs were done (the stage profile: 720p encoding 7.6 s of a 9.1 s job, the
        // other rungs and the decoder waiting on it). Oversubscribing by a thread or two
        // costs little next to an idle core.
        .map(|r| ((budget * r / total).ceil() as usize).clamp(1, budget.ceil() as usize))
        .collect()
}
