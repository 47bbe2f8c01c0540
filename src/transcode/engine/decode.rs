//! Demux and decode on the caller's thread: the video decoder (NVDEC through a CUDA device
//! context when asked and available, else frame-threaded software decoding), and the loop
//! that reads packets, counts damaged ones and sends every frame to each rendition worker
//! (through the caller's [`FrameTransform`] first, when there is one).

use std::ffi::CString;
use std::ptr;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use ffmpeg_next::software::scaling;
use ffmpeg_next::{codec, decoder, ffi, format, frame, util::format::Pixel, Packet, Rational};

use super::super::{avlog, DecoderChoice, FrameTransform, Options, TranscodeError};
use super::{AudioIn, Budget, Msg, Stop};

/// Give up on a stream that keeps failing to demux (garbage after a valid header).
const MAX_CONSECUTIVE_READ_ERRORS: u32 = 64;

/// A timestamp step larger than this, either way, is a discontinuity: the stream is
/// rebased to continue where it was, as the ffmpeg CLI does for MPEG-TS demuxing
/// (`-dts_delta_threshold`, 10 s). The frame-rate filter would otherwise fill the gap with
/// frames (a 13-hour jump is 1.4 million of them at 30 fps). Smaller gaps are real freezes
/// and are filled, within the rendition's frame bound.
const JUMP_LIMIT_SECS: i64 = 10;

/// Closes the timestamp discontinuities of one stream: past a jump, timestamps continue
/// one step after the last one instead of at the jumped value.
pub(super) struct Rebase {
    /// [`JUMP_LIMIT_SECS`] in the stream's time base.
    limit: i64,
    last_raw: Option<i64>,
    last_out: Option<i64>,
    offset: i64,
    pub(super) jumps: u64,
}

impl Rebase {
    pub(super) fn new(tb: Rational) -> Rebase {
        // SAFETY: pure arithmetic on plain rationals.
        let limit =
            unsafe { ffi::av_rescale_q(JUMP_LIMIT_SECS, Rational::new(1, 1).into(), tb.into()) };
        Rebase {
            limit: limit.max(1),
            last_raw: None,
            last_out: None,
            offset: 0,
            jumps: 0,
        }
    }

    /// The offset to add to a timestamp `raw` of this stream; `step` is the time one
    /// frame or packet lasts, in the same base. Returns the jump closed, if any.
    pub(super) fn offset(&mut self, raw: i64, step: i64) -> (i64, Option<i64>) {
        let mut jumped = None;
        if let (Some(last_raw), Some(last_out)) = (self.last_raw, self.last_out) {
            let delta = raw as i128 - last_raw as i128;
            if delta > self.limit as i128 || delta < -(self.limit as i128) {
                self.offset = clamp_i64(last_out as i128 + step.max(1) as i128 - raw as i128);
                self.jumps += 1;
                jumped = Some(clamp_i64(delta));
            }
        }
        self.last_raw = Some(raw);
        self.last_out = Some(raw.saturating_add(self.offset));
        (self.offset, jumped)
    }
}

fn clamp_i64(v: i128) -> i64 {
    v.clamp(i64::MIN as i128 / 4, i64::MAX as i128 / 4) as i64
}

pub(super) struct Decoder {
    pub(super) decoder: decoder::Video,
    pub(super) name: String,
    pub(super) fallback_reason: Option<String>,
}

pub(super) fn open_decoder(
    params: codec::Parameters,
    opts: &Options,
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

/// One CUDA device context per GPU for the whole process, shared by every decoder.
/// Creating one costs hundreds of milliseconds: on an H200, with a context per segment, a
/// 2-second 720p segment to a 3-rung ladder took 814 ms with NVDEC against 509 ms in
/// software, and 12 processes creating contexts at once finished under 41 segments each in
/// 3 minutes (over 205 each with this cache). FFmpeg's CUDA hwcontext pushes and pops the
/// context around each call, so one context serves decoders on any thread.
struct CudaDevice(*mut ffi::AVBufferRef);
// SAFETY: the buffer is only ever read (av_buffer_ref) under the cache's lock; FFmpeg's
// buffer refcounts are atomic and the CUDA context is usable from any thread.
unsafe impl Send for CudaDevice {}

static CUDA_DEVICES: std::sync::Mutex<Vec<(u32, CudaDevice)>> = std::sync::Mutex::new(Vec::new());

/// A new reference to GPU `gpu`'s CUDA device context for NVDEC (created on first use), or
/// why there is none (from libav's log). A failure is not cached: the driver may come back.
fn cuda_device(gpu: u32) -> Result<*mut ffi::AVBufferRef, String> {
    let mut cache = CUDA_DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, dev)) = cache.iter().find(|(g, _)| *g == gpu) {
        // SAFETY: the cached buffer stays referenced by the cache for the process lifetime.
        let r = unsafe { ffi::av_buffer_ref(dev.0) };
        return if r.is_null() {
            Err("out of memory referencing the CUDA device context".into())
        } else {
            Ok(r)
        };
    }
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
        return Err(
            avlog::summarize(&lines).unwrap_or_else(|| ffmpeg_next::Error::from(ret).to_string())
        );
    }
    // SAFETY: `device` is a valid reference we own; the cache keeps it, the caller gets another.
    let r = unsafe { ffi::av_buffer_ref(device) };
    cache.push((gpu, CudaDevice(device)));
    if r.is_null() {
        Err("out of memory referencing the CUDA device context".into())
    } else {
        Ok(r)
    }
}

/// What the decode loop saw.
#[derive(Default)]
pub(super) struct Decoded {
    pub(super) frames: u64,
    pub(super) pixels: u64,
    pub(super) errors: u64,
    pub(super) hw_frames: u64,
    /// Time spent blocked handing frames to full worker queues (the stage profile).
    pub(super) blocked: std::time::Duration,
    /// Timestamp discontinuities closed, video and audio.
    pub(super) jumps: u64,
    first_pts: Option<i64>,
    last_pts: Option<i64>,
}

impl Decoded {
    pub(super) fn media_seconds(&self, tb: Rational, rate: Rational) -> f64 {
        let frame = rate.denominator() as f64 / rate.numerator().max(1) as f64;
        match (self.first_pts, self.last_pts) {
            (Some(a), Some(b)) if b >= a => {
                (b - a) as f64 * tb.numerator() as f64 / tb.denominator().max(1) as f64 + frame
            }
            _ => self.frames as f64 * frame,
        }
    }
}

/// The decode loop's state: its stop rule, wall-time budget and the per-stream rebasing.
struct Feed<'a> {
    senders: &'a [SyncSender<Msg>],
    transform: Option<&'a dyn FrameTransform>,
    stop: &'a Stop,
    budget: &'a Budget,
    video: Rebase,
    /// One source frame, in the video time base.
    video_step: i64,
    video_tb: Rational,
    audio: Rebase,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn decode_all(
    ictx: &mut format::context::Input,
    decoder: &mut decoder::Video,
    vidx: usize,
    vtb: Rational,
    src_rate: Rational,
    audio: Option<&AudioIn>,
    senders: &[SyncSender<Msg>],
    transform: Option<&dyn FrameTransform>,
    stop: &Stop,
    budget: &Budget,
) -> Result<Decoded, TranscodeError> {
    let mut stats = Decoded::default();
    let mut feed = Feed {
        senders,
        transform,
        stop,
        budget,
        video: Rebase::new(vtb),
        // SAFETY: pure arithmetic on plain rationals.
        video_step: unsafe { ffi::av_rescale_q(1, src_rate.invert().into(), vtb.into()).max(1) },
        video_tb: vtb,
        audio: Rebase::new(audio.map_or(Rational::new(1, 90_000), |a| a.time_base)),
    };
    let mut consecutive_read_errors = 0;
    loop {
        stop.check()?;
        // A fresh packet per read: FFmpeg 5.1's av_read_frame re-initialises the packet it
        // is given without unreferencing it, so reusing one leaked every packet's buffer
        // (the whole input, per transcode).
        let mut packet = Packet::empty();
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
            drain_decoder(decoder, &mut feed, &mut stats)?;
        } else if audio.is_some_and(|a| a.index == index) {
            if let Some(ts) = packet.dts().or(packet.pts()) {
                let (offset, jumped) = feed.audio.offset(ts, packet.duration());
                if jumped.is_some() {
                    stats.jumps += 1;
                }
                if offset != 0 {
                    packet.set_pts(packet.pts().map(|p| p.saturating_add(offset)));
                    packet.set_dts(packet.dts().map(|p| p.saturating_add(offset)));
                }
            }
            for tx in senders {
                tx.send(Msg::Audio(packet.clone()))
                    .map_err(|_| worker_gone())?;
            }
        }
    }
    // EOF: flush the frames the decoder still holds (B-frame reordering, threads).
    let _ = decoder.send_eof();
    drain_decoder(decoder, &mut feed, &mut stats)?;
    Ok(stats)
}

fn worker_gone() -> TranscodeError {
    // The worker's own error is reported instead; this only ends the decode loop.
    TranscodeError::Cancelled
}

fn drain_decoder(
    decoder: &mut decoder::Video,
    feed: &mut Feed,
    stats: &mut Decoded,
) -> Result<(), TranscodeError> {
    loop {
        feed.stop.check()?;
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
        let pts = match frame.timestamp() {
            Some(raw) => {
                let (offset, jumped) = feed.video.offset(raw, feed.video_step);
                if let Some(delta) = jumped {
                    stats.jumps += 1;
                    let tb = feed.video_tb;
                    let secs =
                        delta as f64 * tb.numerator() as f64 / tb.denominator().max(1) as f64;
                    tracing::warn!(
                        after_frame = stats.frames,
                        jump_secs = format_args!("{secs:.1}"),
                        "video timestamp jump: a discontinuity; the gap is closed, not filled with frames"
                    );
                }
                Some(raw.saturating_add(offset))
            }
            None => stats.last_pts.map(|p| p + 1),
        };
        frame.set_pts(pts);
        if let Some(p) = pts {
            stats.first_pts = Some(stats.first_pts.map_or(p, |f| f.min(p)));
            stats.last_pts = Some(stats.last_pts.map_or(p, |l| l.max(p)));
        }
        stats.frames += 1;
        stats.pixels += frame.width() as u64 * frame.height() as u64;
        let frame = match feed.transform {
            Some(t) => transformed(t, &frame)?,
            None => frame,
        };
        feed.budget.grow(stats.frames);
        let frame = Arc::new(frame);
        let t = std::time::Instant::now();
        for tx in feed.senders {
            tx.send(Msg::Video(Arc::clone(&frame)))
                .map_err(|_| worker_gone())?;
        }
        stats.blocked += t.elapsed();
    }
}

/// `frame` through the transform: to packed RGB24 (swscale), the transform, back into an
/// RGB24 frame with the source's timestamp and aspect ratio.
fn transformed(
    t: &dyn FrameTransform,
    frame: &frame::Video,
) -> Result<frame::Video, TranscodeError> {
    let (w, h) = (frame.width(), frame.height());
    let sws = |e: ffmpeg_next::Error| TranscodeError::Ffmpeg {
        what: "converting a frame to RGB",
        reason: e.to_string(),
    };
    let mut rgb = frame::Video::empty();
    scaling::Context::get(
        frame.format(),
        w,
        h,
        Pixel::RGB24,
        w,
        h,
        scaling::Flags::BICUBIC,
    )
    .and_then(|mut c| c.run(frame, &mut rgb))
    .map_err(sws)?;
    let row = w as usize * 3;
    let stride = rgb.stride(0);
    let mut packed = Vec::with_capacity(row * h as usize);
    for y in 0..h as usize {
        packed.extend_from_slice(&rgb.data(0)[y * stride..y * stride + row]);
    }
    let (ow, oh) = t.output_size(w, h);
    let out = t.apply(w, h, packed).map_err(TranscodeError::Transform)?;
    let out_row = ow as usize * 3;
    if out.len() != out_row * oh as usize {
        return Err(TranscodeError::Transform(format!(
            "gave {} bytes for a {ow}x{oh} RGB frame (expected {})",
            out.len(),
            out_row * oh as usize
        )));
    }
    let mut dst = frame::Video::new(Pixel::RGB24, ow, oh);
    let stride = dst.stride(0);
    for (y, src) in out.chunks_exact(out_row).enumerate() {
        dst.data_mut(0)[y * stride..y * stride + out_row].copy_from_slice(src);
    }
    dst.set_pts(frame.pts());
    // SAFETY: both frames are valid; a plain field copy.
    unsafe { (*dst.as_mut_ptr()).sample_aspect_ratio = (*frame.as_ptr()).sample_aspect_ratio };
    Ok(dst)
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
