//! The pipeline: demux and decode on the calling thread, one worker thread per
//! rendition (filter graph → encoder → muxer), frames shared by reference.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use ffmpeg_next::{
    codec, decoder, ffi, filter, format, frame, media, picture, util::format::Pixel, Packet,
    Rational,
};
use tokio_util::sync::CancellationToken;

use super::encoder::{self, Setup};
use super::{
    avlog, input, profile, DecoderChoice, Profile, RenditionReport, Report, Request, TranscodeError,
};

/// Frames queued per rendition worker. Small: frames are large and the decoder is
/// rarely the bottleneck, so a deep queue only costs memory.
const QUEUE_DEPTH: usize = 3;

/// Give up on a stream that keeps failing to demux (garbage after a valid header).
const MAX_CONSECUTIVE_READ_ERRORS: u32 = 64;

/// Decides when a job must stop: the caller cancelled, the deadline passed, or a
/// sibling worker failed (`abort`, a child token that never cancels the caller's).
#[derive(Clone)]
struct Stop {
    abort: CancellationToken,
    deadline: Option<Instant>,
    started: Instant,
}

impl Stop {
    fn check(&self) -> Result<(), TranscodeError> {
        if self.abort.is_cancelled() {
            return Err(TranscodeError::Cancelled);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(TranscodeError::DeadlineExceeded {
                elapsed_ms: self.started.elapsed().as_millis() as u64,
            });
        }
        Ok(())
    }
    fn should_stop(&self) -> bool {
        self.check().is_err()
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

enum Msg {
    Video(Arc<frame::Video>),
    Audio(Packet),
}

/// Transcodes `req.input` into one file per profile in `req.out_dir`.
///
/// Blocking; run it on a dedicated thread. See the module docs of
/// [`crate::transcode`] for the pipeline and the guarantees on failure.
pub fn transcode(req: &Request) -> Result<Report, TranscodeError> {
    let started = Instant::now();
    run(req, started).map_err(|e| caller_stop(req, started).unwrap_or(e))
}

fn run(req: &Request, started: Instant) -> Result<Report, TranscodeError> {
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

    let Decoder {
        mut decoder,
        name: decoder_name,
        fallback_reason: decoder_fallback,
    } = open_decoder(vparams, &req.options)?;
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

    let dims: Vec<(u32, u32)> = req
        .profiles
        .iter()
        .map(|p| {
            profile::fit_dimensions(
                src_w,
                src_h,
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
        )?;
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
        fallback_reason = decoder_fallback;
    }

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
            &mut decoder,
            vidx,
            audio.as_ref(),
            &senders,
            &stop,
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

    // A caller's cancel or deadline wins over the secondary errors it caused.
    stop.check()?;
    let decoded = decoded?;
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
    if decoded.frames == 0 {
        return Err(TranscodeError::NoFrames {
            decode_errors: decoded.errors,
        });
    }
    let mut renditions = Vec::with_capacity(done.len());
    for d in done {
        renditions.push(d.commit()?);
    }
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
        realtime_factor: if wall.as_secs_f64() > 0.0 {
            media_seconds / wall.as_secs_f64()
        } else {
            0.0
        },
        encoded_pixels: renditions.iter().map(|r| r.pixels).sum(),
        fallback_reason,
        renditions,
    })
}

struct AudioIn {
    index: usize,
    time_base: Rational,
    params: codec::Parameters,
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

struct Decoder {
    decoder: decoder::Video,
    name: String,
    fallback_reason: Option<String>,
}

fn open_decoder(
    params: codec::Parameters,
    opts: &super::Options,
) -> Result<Decoder, TranscodeError> {
    let id = params.id();
    let codec = decoder::find(id)
        .ok_or_else(|| TranscodeError::NoDecoder(format!("{id:?}").to_lowercase()))?;
    let mut ctx =
        codec::context::Context::from_parameters(params).map_err(|e| TranscodeError::Ffmpeg {
            what: "reading the video stream's parameters",
            reason: e.to_string(),
        })?;
    let mut fallback_reason = None;
    let mut hw = false;
    if opts.decoder != DecoderChoice::Software {
        match cuda_device(opts.gpu) {
            Ok(device) => {
                // SAFETY: the context is not opened yet; it takes ownership of this
                // buffer reference and unrefs it when freed.
                unsafe { (*ctx.as_mut_ptr()).hw_device_ctx = device };
                hw = true;
            }
            Err(reason) if opts.decoder == DecoderChoice::Nvdec => {
                return Err(TranscodeError::NvdecUnavailable {
                    gpu: opts.gpu,
                    reason,
                })
            }
            Err(reason) => {
                tracing::debug!(%reason, "NVDEC unavailable, decoding in software");
                fallback_reason = Some(format!("NVDEC unavailable on GPU {}: {reason}", opts.gpu));
            }
        }
    }
    if !hw {
        // ffmpeg-next leaves one thread by default; frame threading is the largest
        // single lever on CPU decode throughput.
        ctx.set_threading(codec::threading::Config {
            kind: codec::threading::Type::Frame,
            count: opts.decoder_threads,
            ..Default::default()
        });
    }
    let (opened, lines) = avlog::capture(|| ctx.decoder().open_as(codec).and_then(|d| d.video()));
    let decoder = opened.map_err(|e| TranscodeError::Ffmpeg {
        what: "opening the video decoder",
        reason: avlog::summarize(&lines).unwrap_or_else(|| e.to_string()),
    })?;
    Ok(Decoder {
        decoder,
        name: codec.name().to_string(),
        fallback_reason,
    })
}

/// Creates a CUDA device context for NVDEC, or says why not (from libav's log).
fn cuda_device(gpu: u32) -> Result<*mut ffi::AVBufferRef, String> {
    let name = CString::new(gpu.to_string()).map_err(|e| e.to_string())?;
    let mut device: *mut ffi::AVBufferRef = ptr::null_mut();
    // SAFETY: out-pointer and device name are valid for the call.
    let (ret, lines) = avlog::capture(|| unsafe {
        ffi::av_hwdevice_ctx_create(
            &mut device,
            ffi::AVHWDeviceType::AV_HWDEVICE_TYPE_CUDA,
            name.as_ptr(),
            ptr::null_mut(),
            0,
        )
    });
    if ret < 0 || device.is_null() {
        Err(avlog::summarize(&lines).unwrap_or_else(|| ffmpeg_next::Error::from(ret).to_string()))
    } else {
        Ok(device)
    }
}

#[derive(Default)]
struct Decoded {
    frames: u64,
    pixels: u64,
    errors: u64,
    hw_frames: u64,
    first_pts: Option<i64>,
    last_pts: Option<i64>,
}

impl Decoded {
    fn media_seconds(&self, tb: Rational, rate: Rational) -> f64 {
        let frame = rate.denominator() as f64 / rate.numerator().max(1) as f64;
        match (self.first_pts, self.last_pts) {
            (Some(a), Some(b)) if b >= a => {
                (b - a) as f64 * tb.numerator() as f64 / tb.denominator().max(1) as f64 + frame
            }
            _ => self.frames as f64 * frame,
        }
    }
}

fn decode_all(
    ictx: &mut format::context::Input,
    decoder: &mut decoder::Video,
    vidx: usize,
    audio: Option<&AudioIn>,
    senders: &[SyncSender<Msg>],
    stop: &Stop,
) -> Result<Decoded, TranscodeError> {
    let mut stats = Decoded::default();
    let mut consecutive_read_errors = 0;
    let mut packet = Packet::empty();
    loop {
        stop.check()?;
        match packet.read(ictx) {
            Ok(()) => consecutive_read_errors = 0,
            Err(ffmpeg_next::Error::Eof) => break,
            Err(ffmpeg_next::Error::Exit) => {
                stop.check()?;
                break;
            }
            Err(_) => {
                // A damaged packet: count it and keep going, a truncated segment
                // still yields the frames before the damage.
                stats.errors += 1;
                consecutive_read_errors += 1;
                if consecutive_read_errors >= MAX_CONSECUTIVE_READ_ERRORS {
                    break;
                }
                continue;
            }
        }
        let index = packet.stream();
        if index == vidx {
            if decoder.send_packet(&packet).is_err() {
                stats.errors += 1;
            }
            drain_decoder(decoder, senders, &mut stats)?;
        } else if audio.is_some_and(|a| a.index == index) {
            for tx in senders {
                tx.send(Msg::Audio(packet.clone()))
                    .map_err(|_| worker_gone())?;
            }
        }
    }
    // EOF: flush the frames the decoder still holds (B-frame reordering, threads).
    let _ = decoder.send_eof();
    drain_decoder(decoder, senders, &mut stats)?;
    Ok(stats)
}

fn worker_gone() -> TranscodeError {
    // The worker's own error is reported instead; this only ends the decode loop.
    TranscodeError::Cancelled
}

fn drain_decoder(
    decoder: &mut decoder::Video,
    senders: &[SyncSender<Msg>],
    stats: &mut Decoded,
) -> Result<(), TranscodeError> {
    loop {
        let mut frame = frame::Video::empty();
        match decoder.receive_frame(&mut frame) {
            Ok(()) => {}
            Err(ffmpeg_next::Error::Other { errno }) if errno == libc::EAGAIN => return Ok(()),
            Err(ffmpeg_next::Error::Eof) => return Ok(()),
            Err(_) => {
                stats.errors += 1;
                return Ok(());
            }
        }
        // Frames the decoder had to conceal or flag corrupt count as damage too:
        // truncated input rarely makes libavcodec return an error outright.
        // SAFETY: reading two plain fields of a valid frame.
        let damaged = unsafe {
            let f = frame.as_ptr();
            (*f).decode_error_flags != 0 || ((*f).flags & ffi::AV_FRAME_FLAG_CORRUPT) != 0
        };
        if damaged {
            stats.errors += 1;
        }
        let mut frame = if frame.format() == Pixel::CUDA {
            stats.hw_frames += 1;
            download(&frame)?
        } else {
            frame
        };
        // Best-effort timestamps survive reordering and missing PTS in damaged input.
        let pts = frame.timestamp().or_else(|| stats.last_pts.map(|p| p + 1));
        frame.set_pts(pts);
        if let Some(p) = pts {
            stats.first_pts = Some(stats.first_pts.map_or(p, |f| f.min(p)));
            stats.last_pts = Some(stats.last_pts.map_or(p, |l| l.max(p)));
        }
        stats.frames += 1;
        stats.pixels += frame.width() as u64 * frame.height() as u64;
        let frame = Arc::new(frame);
        for tx in senders {
            tx.send(Msg::Video(Arc::clone(&frame)))
                .map_err(|_| worker_gone())?;
        }
    }
}

/// Copies an NVDEC frame into system memory for the CPU filter graph.
fn download(hw: &frame::Video) -> Result<frame::Video, TranscodeError> {
    let mut sw = frame::Video::empty();
    // SAFETY: both frames are valid; transfer allocates `sw`'s buffers.
    let ret = unsafe {
        let r = ffi::av_hwframe_transfer_data(sw.as_mut_ptr(), hw.as_ptr(), 0);
        if r >= 0 {
            ffi::av_frame_copy_props(sw.as_mut_ptr(), hw.as_ptr())
        } else {
            r
        }
    };
    if ret < 0 {
        return Err(TranscodeError::Ffmpeg {
            what: "copying a decoded frame from the GPU",
            reason: ffmpeg_next::Error::from(ret).to_string(),
        });
    }
    Ok(sw)
}

/// A temporary output that is deleted unless committed.
struct TempOutput {
    tmp: PathBuf,
    dst: PathBuf,
    keep: bool,
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// One rendition's filter graph, encoder and muxer, run on its own thread.
struct Worker {
    profile: Profile,
    width: u32,
    height: u32,
    in_time_base: Rational,
    encoder: ffmpeg_next::encoder::video::Encoder,
    encoder_name: &'static str,
    fallback_reason: Option<String>,
    /// `auto` found NVENC absent on this host (not merely out of sessions).
    nvenc_unavailable: bool,
    enc_time_base: Rational,
    octx: format::context::Output,
    video_out: usize,
    video_out_time_base: Rational,
    audio: Option<AudioOut>,
    graph: Option<Graph>,
    /// Latest input pts and one source frame's duration, both in `in_time_base`.
    last_in_pts: Option<i64>,
    in_frame_duration: i64,
    /// Frames sent to the encoder.
    sent: u64,
    /// Packets out of the encoder, one per encoded frame: the pixel count's basis.
    frames: u64,
    output: TempOutput,
}

/// Where copied audio packets go in this rendition's muxer.
struct AudioOut {
    index: usize,
    in_time_base: Rational,
    out_time_base: Rational,
}

struct Graph {
    graph: filter::Graph,
    /// Input geometry the graph was built for; a change mid-stream rebuilds it.
    key: (u32, u32, Pixel),
    out_time_base: Rational,
}

struct Finished {
    report: RenditionReport,
    output: TempOutput,
}

impl Finished {
    fn commit(mut self) -> Result<RenditionReport, TranscodeError> {
        std::fs::rename(&self.output.tmp, &self.output.dst).map_err(|e| {
            TranscodeError::Output {
                path: self.output.dst.display().to_string(),
                reason: e.to_string(),
            }
        })?;
        self.output.keep = true;
        Ok(self.report)
    }
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    fn open(
        profile: &Profile,
        req: &Request,
        encoder_choice: super::EncoderChoice,
        (width, height): (u32, u32),
        src_rate: Rational,
        in_time_base: Rational,
        audio: Option<&AudioIn>,
        threads: usize,
    ) -> Result<Worker, TranscodeError> {
        let dst = req.out_dir.join(profile.file_name());
        let tmp = temp_name(&dst);
        let output = TempOutput {
            tmp: tmp.clone(),
            dst: dst.clone(),
            keep: false,
        };
        let out_err = |reason: String| TranscodeError::Output {
            path: dst.display().to_string(),
            reason,
        };
        let mut octx =
            format::output_as(&tmp, profile.format.muxer()).map_err(|e| out_err(e.to_string()))?;
        let global_header = octx
            .format()
            .flags()
            .contains(format::flag::Flags::GLOBAL_HEADER);
        let (enc_time_base, frame_rate) = match profile.fps() {
            Some(_) => (
                Rational::new(profile.fps_den as i32, profile.fps_num as i32),
                Rational::new(profile.fps_num as i32, profile.fps_den as i32),
            ),
            None => (in_time_base, src_rate),
        };
        let opened = encoder::open(
            encoder_choice,
            &Setup {
                profile,
                width,
                height,
                time_base: enc_time_base,
                frame_rate,
                global_header,
                gpu: req.options.gpu,
                x264_preset: &req.options.x264_preset,
                threads,
            },
        )?;
        let video_out = {
            let mut st = octx
                .add_stream(ffmpeg_next::encoder::find_by_name(opened.name))
                .map_err(|e| out_err(e.to_string()))?;
            st.set_parameters(&opened.encoder);
            st.set_time_base(enc_time_base);
            st.set_avg_frame_rate(frame_rate);
            st.index()
        };
        let audio_out = match audio {
            Some(a) => {
                let mut st = octx
                    .add_stream(ffmpeg_next::encoder::find(codec::Id::None))
                    .map_err(|e| out_err(e.to_string()))?;
                st.set_parameters(a.params.clone());
                // SAFETY: the stream's codecpar is valid; a tag from the source container
                // may be invalid in the output container, so let the muxer choose.
                unsafe { (*st.parameters().as_mut_ptr()).codec_tag = 0 };
                Some((st.index(), a.time_base))
            }
            None => None,
        };
        let (header, lines) = avlog::capture(|| octx.write_header());
        if let Err(e) = header {
            let why = avlog::summarize(&lines).unwrap_or_else(|| e.to_string());
            return Err(out_err(format!(
                "cannot start the {} muxer: {why}",
                profile.format.muxer()
            )));
        }
        // The muxer fixes its streams' time bases in write_header; read them once here
        // instead of per packet.
        let out_tb = |idx: usize, fallback: Rational| {
            octx.stream(idx).map(|s| s.time_base()).unwrap_or(fallback)
        };
        let video_out_time_base = out_tb(video_out, enc_time_base);
        let audio = audio_out.map(|(idx, in_tb)| AudioOut {
            index: idx,
            in_time_base: in_tb,
            out_time_base: out_tb(idx, in_tb),
        });
        Ok(Worker {
            profile: profile.clone(),
            width,
            height,
            in_time_base,
            encoder: opened.encoder,
            encoder_name: opened.name,
            fallback_reason: opened.fallback_reason,
            nvenc_unavailable: opened.nvenc_unavailable,
            enc_time_base,
            octx,
            video_out,
            video_out_time_base,
            audio,
            graph: None,
            last_in_pts: None,
            // SAFETY: pure arithmetic on plain rationals.
            in_frame_duration: unsafe {
                ffi::av_rescale_q(1, src_rate.invert().into(), in_time_base.into()).max(1)
            },
            sent: 0,
            frames: 0,
            output,
        })
    }

    fn run(mut self, rx: Receiver<Msg>, stop: &Stop) -> Result<Finished, TranscodeError> {
        for msg in rx {
            stop.check()?;
            match msg {
                Msg::Video(frame) => self.push_video(&frame)?,
                Msg::Audio(packet) => self.push_audio(packet),
            }
        }
        stop.check()?;
        // Flush: filter graph first (fps may hold a frame), then the encoder.
        if let Some(g) = self.graph.as_mut() {
            // Close at the *end* of the last frame, as the ffmpeg CLI does: closing at
            // its start makes the fps filter drop it.
            let eof_pts = self
                .last_in_pts
                .map_or(ffi::AV_NOPTS_VALUE, |p| p + self.in_frame_duration);
            if let Some(mut src) = g.graph.get("in") {
                // SAFETY: valid buffersrc context; closing only marks EOF.
                unsafe {
                    ffi::av_buffersrc_close(
                        src.as_mut_ptr(),
                        eof_pts,
                        ffi::AV_BUFFERSRC_FLAG_PUSH as u32,
                    );
                }
            }
            self.drain_graph()?;
        }
        self.encoder
            .send_eof()
            .map_err(|e| self.ffmpeg("flushing the encoder", e))?;
        self.drain_encoder()?;
        self.octx
            .write_trailer()
            .map_err(|e| self.write_err(e.to_string()))?;
        let Worker {
            profile,
            width,
            height,
            frames,
            encoder_name,
            octx,
            output,
            ..
        } = self;
        drop(octx); // closes the file so its size is final
        let bytes = std::fs::metadata(&output.tmp).map(|m| m.len()).unwrap_or(0);
        Ok(Finished {
            report: RenditionReport {
                path: output.dst.clone(),
                profile: profile.name.clone(),
                width,
                height,
                frames,
                pixels: width as u64 * height as u64 * frames,
                bytes,
                encoder: encoder_name.to_string(),
                format: profile.format,
                mime: profile.format.mime(),
            },
            output,
        })
    }

    fn push_video(&mut self, frame: &frame::Video) -> Result<(), TranscodeError> {
        if let Some(p) = frame.pts() {
            self.last_in_pts = Some(self.last_in_pts.map_or(p, |l| l.max(p)));
        }
        let key = (frame.width(), frame.height(), frame.format());
        if self.graph.as_ref().is_none_or(|g| g.key != key) {
            if self.graph.is_some() {
                tracing::debug!(profile = %self.profile.name, ?key, "input geometry changed mid-segment; rebuilding the filter graph");
            }
            self.graph = Some(self.build_graph(frame)?);
        }
        let g = self.graph.as_mut().ok_or_else(|| TranscodeError::Ffmpeg {
            what: "filtering",
            reason: "filter graph missing".into(),
        })?;
        let mut src = g.graph.get("in").ok_or_else(|| TranscodeError::Ffmpeg {
            what: "filtering",
            reason: "buffer source missing".into(),
        })?;
        // SAFETY: `write_frame` takes a new reference to the shared frame's buffers and
        // leaves the frame itself untouched, so other workers can keep reading it.
        let ret = unsafe { ffi::av_buffersrc_write_frame(src.as_mut_ptr(), frame.as_ptr()) };
        if ret < 0 {
            return Err(self.ffmpeg("feeding the scaler", ffmpeg_next::Error::from(ret)));
        }
        self.drain_graph()
    }

    fn build_graph(&self, frame: &frame::Video) -> Result<Graph, TranscodeError> {
        let fail = |e: ffmpeg_next::Error| TranscodeError::Ffmpeg {
            what: "building the scale filter graph",
            reason: e.to_string(),
        };
        let sar = frame.aspect_ratio();
        let (sn, sd) = if sar.numerator() > 0 && sar.denominator() > 0 {
            (sar.numerator(), sar.denominator())
        } else {
            (1, 1)
        };
        let pix: ffi::AVPixelFormat = frame.format().into();
        let args = format!(
            "video_size={}x{}:pix_fmt={}:time_base={}/{}:pixel_aspect={}/{}",
            frame.width(),
            frame.height(),
            pix as i32,
            self.in_time_base.numerator(),
            self.in_time_base.denominator(),
            sn,
            sd
        );
        let mut graph = filter::Graph::new();
        let buffer = filter::find("buffer")
            .ok_or(ffmpeg_next::Error::FilterNotFound)
            .map_err(fail)?;
        let sink = filter::find("buffersink")
            .ok_or(ffmpeg_next::Error::FilterNotFound)
            .map_err(fail)?;
        graph.add(&buffer, "in", &args).map_err(fail)?;
        graph.add(&sink, "out", "").map_err(fail)?;
        let spec = filter_spec(&self.profile, self.width, self.height);
        graph
            .output("in", 0)
            .and_then(|p| p.input("out", 0))
            .and_then(|p| p.parse(&spec))
            .map_err(fail)?;
        graph.validate().map_err(fail)?;
        let out_time_base = graph
            .get("out")
            .map(|mut c| c.sink().time_base())
            .unwrap_or(self.enc_time_base);
        Ok(Graph {
            graph,
            key: (frame.width(), frame.height(), frame.format()),
            out_time_base,
        })
    }

    fn drain_graph(&mut self) -> Result<(), TranscodeError> {
        loop {
            let Some(g) = self.graph.as_mut() else {
                return Ok(());
            };
            let out_tb = g.out_time_base;
            let mut filtered = frame::Video::empty();
            let got = match g.graph.get("out") {
                Some(mut sink) => sink.sink().frame(&mut filtered),
                None => return Ok(()),
            };
            match got {
                Ok(()) => self.encode(filtered, out_tb)?,
                Err(ffmpeg_next::Error::Eof) => return Ok(()),
                Err(ffmpeg_next::Error::Other { errno }) if errno == libc::EAGAIN => return Ok(()),
                Err(e) => return Err(self.ffmpeg("scaling", e)),
            }
        }
    }

    fn encode(&mut self, mut frame: frame::Video, tb: Rational) -> Result<(), TranscodeError> {
        if let Some(pts) = frame.pts() {
            // SAFETY: pure arithmetic on plain rationals.
            let pts = unsafe { ffi::av_rescale_q(pts, tb.into(), self.enc_time_base.into()) };
            frame.set_pts(Some(pts));
        }
        // The decoder's picture types must not leak into the encoder (it would copy the
        // source's GOP); only the segment's first frame is forced, to an IDR.
        frame.set_kind(if self.sent == 0 {
            picture::Type::I
        } else {
            picture::Type::None
        });
        self.sent += 1;
        self.encoder
            .send_frame(&frame)
            .map_err(|e| self.ffmpeg("encoding", e))?;
        self.drain_encoder()
    }

    fn drain_encoder(&mut self) -> Result<(), TranscodeError> {
        let mut packet = Packet::empty();
        loop {
            match self.encoder.receive_packet(&mut packet) {
                Ok(()) => {
                    self.frames += 1;
                    packet.set_stream(self.video_out);
                    packet.rescale_ts(self.enc_time_base, self.video_out_time_base);
                    packet
                        .write_interleaved(&mut self.octx)
                        .map_err(|e| self.write_err(e.to_string()))?;
                }
                Err(ffmpeg_next::Error::Eof) => return Ok(()),
                Err(ffmpeg_next::Error::Other { errno }) if errno == libc::EAGAIN => return Ok(()),
                Err(e) => return Err(self.ffmpeg("encoding", e)),
            }
        }
    }

    fn push_audio(&mut self, mut packet: Packet) {
        let Some(a) = &self.audio else {
            return;
        };
        packet.set_stream(a.index);
        packet.rescale_ts(a.in_time_base, a.out_time_base);
        packet.set_position(-1);
        // Audio is passed through untouched; a packet the muxer refuses (damaged
        // timestamps in a truncated segment) is dropped rather than failing the video.
        if let Err(e) = packet.write_interleaved(&mut self.octx) {
            tracing::debug!(profile = %self.profile.name, error = %e, "dropped an audio packet the muxer refused");
        }
    }

    fn ffmpeg(&self, what: &'static str, e: ffmpeg_next::Error) -> TranscodeError {
        TranscodeError::Ffmpeg {
            what,
            reason: format!("{e} (rendition {})", self.profile.name),
        }
    }
    fn write_err(&self, reason: String) -> TranscodeError {
        TranscodeError::Output {
            path: self.output.dst.display().to_string(),
            reason,
        }
    }
}

/// fps → scale → yuv420p, the same chain a `-vf` on the ffmpeg CLI would run.
pub(crate) fn filter_spec(profile: &Profile, width: u32, height: u32) -> String {
    let mut spec = String::new();
    if profile.fps().is_some() {
        spec.push_str(&format!("fps=fps={}/{},", profile.fps_num, profile.fps_den));
    }
    spec.push_str(&format!("scale={width}:{height},format=yuv420p,setsar=1"));
    spec
}

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
    let src_fps = src_rate.numerator() as f64 / src_rate.denominator().max(1) as f64;
    let rates: Vec<f64> = profiles
        .iter()
        .zip(dims)
        .map(|(p, &(w, h))| w as f64 * h as f64 * p.fps().unwrap_or(src_fps).min(src_fps.max(1.0)))
        .collect();
    let total: f64 = rates.iter().sum::<f64>().max(1.0);
    rates
        .iter()
        .map(|r| ((cores as f64 * r / total).round() as usize).clamp(1, cores.max(1)))
        .collect()
}

/// A temporary name beside `dst`, unique per process *and* per call, so two
/// transcodes of one process writing into the same directory never share a file.
fn temp_name(dst: &Path) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = dst
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{}.{seq}.tmp", std::process::id()));
    dst.with_file_name(name)
}
